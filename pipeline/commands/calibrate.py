"""bonestream calibrate SOURCE... --out REF"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.calibrate import PRESETS, CalibrationSettings
from calibration.clustering import KMeansSettings
from calibration.voting import VoteSettings
from models.loader import load_model
from models.preprocess import RESAMPLING, parse_size
from pipeline.commands.common import add_model_arguments, announce_weights
from pipeline.commands.numbers import FRACTION, POSITIVE_INT, number
from pipeline.commands.paths import check_output_file
from pipeline.offline import GeometryOptions, calibrate_sources


def add_geometry_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--roi", default="auto", help="imaging area: auto (drop black margins), full, or top,left,height,width")
    p.add_argument("--short-side", type=number(int, 8), default=224, help="model input short side, aspect of the ROI kept (default 224)")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="HxW", help="exact model input size instead")
    p.add_argument("--stride", type=int, choices=(8, 4), default=8, help="patch stride: 8, or 4 (overlapping, as the original)")
    p.add_argument(
        "--resampling", default="lanczos", choices=RESAMPLING,
        help="resize to the model input: lanczos (default, as the original), area, linear, cubic on the host (OpenCV), or "
        "bilinear-aa, bicubic-aa on the model's device (antialiased torch; whole frames cross to the GPU, no host resize). "
        "Stored in the reference: run time always uses the same one",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="images, folders, globs, videos or phantom[:N]")
    p.add_argument("--out", required=True, help="reference file to write (JSON)")
    p.add_argument("--count", type=POSITIVE_INT, default=None, help="frames evenly spread over each source (default: all images, 10 per video)")
    add_calibration_arguments(p)
    add_geometry_arguments(p)
    add_model_arguments(p)


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """The options settings_from reads, shared with `bonestream experiment`."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="study", help="study: tau 0.2 >=, 65%%, all heads; original: 0.065 >, 75%%, heads 0,2,4,5, low-res saliency")
    p.add_argument("--k", type=number(int, 1, 64), default=None, help="fixed number of clusters (default: elbow rule)")
    p.add_argument("--tau", type=number(float, 0, 1), default=None, help="saliency threshold (overrides the preset)")
    p.add_argument("--votes", type=FRACTION, default=None, help="fraction of frames that must vote (overrides the preset)")
    p.add_argument("--heads", default=None, help="attention heads for saliency: all, or e.g. 0,2,4,5")
    p.add_argument("--sample-interval", type=POSITIVE_INT, default=100, help="every n-th descriptor of a frame trains k-means (default 100)")


def settings_from(args: argparse.Namespace) -> CalibrationSettings:
    base = PRESETS[args.preset]
    voting = VoteSettings(
        tau=base.voting.tau if args.tau is None else args.tau,
        fraction=base.voting.fraction if args.votes is None else args.votes,
        strict=base.voting.strict,
    )
    heads = base.heads if args.heads is None else (None if args.heads == "all" else tuple(int(h) for h in args.heads.split(",")))
    kmeans = KMeansSettings(k=args.k, sample_interval=args.sample_interval)
    return CalibrationSettings(kmeans=kmeans, voting=voting, heads=heads, lowres_saliency=base.lowres_saliency, preset=args.preset)


def geometry_from(args: argparse.Namespace) -> GeometryOptions:
    return GeometryOptions(args.roi, args.short_side, args.input_size, args.stride, args.resampling)


def run(args: argparse.Namespace) -> int:
    check_output_file(Path(args.out), "--out")
    model, identity = load_model(args.weights, progress=args.progress)
    announce_weights(identity.label, identity.warning)
    ref = calibrate_sources(
        args.sources, model, identity, count=args.count, geometry=geometry_from(args),
        settings=settings_from(args), progress=args.progress, device=args.device,
    )
    ref.save(args.out)
    g = ref.geometry
    print(f"reference {ref.id} -> {args.out}")
    print(f"  frames {len(ref.frames)}, roi {g.roi}, input {g.input_size[0]}x{g.input_size[1]}, stride {g.stride}, grid {g.grid[0]}x{g.grid[1]}")
    print(f"  k={ref.k} ({ref.settings['k_chosen_by']}), bone clusters {list(ref.foreground)} (votes {ref.votes}, need {ref.required_votes})")
    return 0
