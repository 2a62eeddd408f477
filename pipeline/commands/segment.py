"""bonestream segment SOURCE... --reference REF --out DIR"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.common import (
    add_gate_argument, add_model_arguments, add_range_arguments, add_refine_argument, announce_weights, frame_range, load_segmenter, reference_for,
)
from pipeline.commands.numbers import POSITIVE_INT
from pipeline.commands.paths import check_fresh_results, check_output_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="images, folders, globs, videos or phantom[:N]")
    p.add_argument("--reference", required=True, help="reference file from `bonestream calibrate`")
    p.add_argument("--out", required=True, help="output folder: masks/, overlays, summary.json")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1, help="frames per engine call, the engine's static batch (default 1)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="masks and summary only")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run's results in --out (refused otherwise)")
    add_range_arguments(p)
    add_model_arguments(p)
    add_gate_argument(p)
    add_refine_argument(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.capture.open import open_sources
    from pipeline.offline import SEGMENT_RESULTS, segment_sources

    check_output_dir(Path(args.out), "--out")
    check_fresh_results(Path(args.out), "--out", SEGMENT_RESULTS, args.overwrite)
    frames = frame_range(args)
    sources = open_sources(args.sources)
    for source in sources:
        frames.check(source)
    reference = reference_for(args, sources)  # all checked before the model loads
    seg = load_segmenter(args, reference)
    announce_weights(seg.weights.label)
    summary = segment_sources(
        seg, sources, args.out, batch_size=args.batch_size, overlay=args.overlay, progress=args.progress, frames=frames,
    )
    print(f"wrote {summary}")
    return 0
