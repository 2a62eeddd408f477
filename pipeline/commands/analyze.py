"""bonestream analyze FRAMES --out DIR"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from models.architecture import BLOCKS, FACETS
from models.errors import BonestreamError
from pipeline.commands.calibrate import add_geometry_arguments, geometry_from
from pipeline.commands.common import add_weights_arguments, announce_weights, weights_for
from pipeline.commands.numbers import POSITIVE_INT
from pipeline.commands.paths import check_output_dir
from pipeline.geometry_options import GeometryOptions

if TYPE_CHECKING:
    from models.preprocess import Geometry
    from pipeline.capture.frame import Frame


def parse_blocks(text: str) -> tuple[int, ...]:
    """``1-12``, ``12``, ``1,6,12`` or ``1-4,12``: sorted, each once, all within 1-12."""
    blocks: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected block numbers and ranges, e.g. 1-12 or 1,6,12") from None
        if not BLOCKS[0] <= first <= last <= BLOCKS[-1]:
            raise argparse.ArgumentTypeError(f"{text!r}: blocks run from {BLOCKS[0]} to {BLOCKS[-1]} (a range low-high)")
        blocks.update(range(first, last + 1))
    return tuple(sorted(blocks))


def parse_facets(text: str) -> tuple[str, ...]:
    """Comma-separated facets among key, query, value, token, kept in that order."""
    wanted = {part.strip() for part in text.split(",")}
    unknown = sorted(wanted - set(FACETS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown facet(s) {', '.join(unknown)}: choose from {','.join(FACETS)}")
    return tuple(f for f in FACETS if f in wanted)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="images, folders, globs, videos or phantom[:N]")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNGs, contact sheets and index.json")
    p.add_argument(
        "--count", type=POSITIVE_INT, default=None, help="frames evenly spread over each source (default: all images, 10 per video)"
    )
    p.add_argument("--blocks", type=parse_blocks, default=BLOCKS, help="blocks to analyse, e.g. 12, 1,6,12 or 1-4,12 (default 1-12)")
    p.add_argument("--facets", type=parse_facets, default=FACETS, help="facets among key,query,value,token (default all)")
    p.add_argument(
        "--truth", type=Path, default=None,
        help="bone masks for a scatter of block-12 keys coloured by bone fraction: a folder of masks named like the frames, "
        "or one mask file for a single frame",
    )
    p.add_argument("--reference", default=None, metavar="REF", help="take the geometry from this reference instead of the options below")
    add_geometry_arguments(p)
    add_weights_arguments(p)


def geometry_for(args: argparse.Namespace, frames: Sequence[Frame]) -> tuple[Geometry, str | None]:
    """The geometry (and reference id) to analyse ``frames`` with; every frame is checked against it."""
    from calibration.reference import Reference

    if args.reference is None:
        return geometry_from(args).build(frames), None
    if geometry_from(args) != GeometryOptions():
        raise BonestreamError("--reference sets the geometry: drop --roi, --short-side, --input-size, --stride and --resampling")
    reference = Reference.load(args.reference)
    for frame in frames:
        reference.geometry.check_frame(frame.image, frame.name)
    return reference.geometry, reference.id


def run(args: argparse.Namespace) -> int:
    from calibration.reference import Reference
    from models.loader import load_model
    from pipeline.analysis.analyze import AnalysisSettings, analyze
    from pipeline.analysis.truth import load_truth
    from pipeline.capture.open import open_sources, sample_frames

    check_output_dir(args.out, "--out")
    frames = sample_frames(open_sources(args.sources), args.count)
    geometry, reference = geometry_for(args, frames)
    truth = load_truth(args.truth, frames) if args.truth is not None else None
    weights = args.weights if args.reference is None else weights_for(Reference.load(args.reference), args.weights)
    model, identity = load_model(weights, progress=args.progress)
    announce_weights(identity.label)
    g = geometry
    print(f"{len(frames)} frames, roi {g.roi}, input {g.input_size[0]}x{g.input_size[1]}, stride {g.stride}, grid {g.grid[0]}x{g.grid[1]}; "
          f"blocks {','.join(map(str, args.blocks))}, facets {','.join(args.facets)}")
    settings = AnalysisSettings(blocks=args.blocks, facets=args.facets)
    index = analyze(
        model, identity, geometry, frames, args.out, settings, truth, reference=reference, progress=args.progress, device=args.device
    )
    print(f"wrote {args.out}: per frame PCA images, attention maps and a contact sheet; index {index}")
    return 0
