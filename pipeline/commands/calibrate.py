"""bonestream calibrate SOURCE... --out REF"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from models.resampling import DEFAULT_RESAMPLING, RESAMPLING, device_resampling
from pipeline.choices import on_cuda
from pipeline.commands.common import add_model_arguments, announce_weights
from pipeline.commands.numbers import FRACTION, POSITIVE_INT, SIDE, heads, input_size, number
from pipeline.commands.paths import check_output_file
from pipeline.geometry_options import GEOMETRY_PRESETS, GeometryOptions

if TYPE_CHECKING:
    from calibration.calibrate import CalibrationSettings


def add_geometry_arguments(p: argparse.ArgumentParser) -> None:
    """Geometry options; each left out takes the value of --preset where the command has one (else the study's)."""
    study = GEOMETRY_PRESETS["study"]
    p.add_argument("--roi", default=None, help=f"imaging area: auto (drop black margins), full, or top,left,height,width (default {study.roi})")
    p.add_argument("--short-side", type=SIDE, default=None, help=f"model input short side, aspect of the ROI kept (default {study.short_side})")
    p.add_argument(
        "--exact-sides", dest="round_sides", action="store_false", default=None,
        help="keep the short side exactly and truncate the long one (the original's torchvision Resize); default: both "
        "sides rounded to multiples of 8",
    )
    p.add_argument("--input-size", type=input_size, default=None, metavar="HxW", help="exact model input size instead")
    p.add_argument("--stride", type=int, choices=(8, 4), default=None, help=f"patch stride: 8, or 4 (overlapping, as the original) (default {study.stride})")
    p.add_argument(
        "--resampling", default=None, choices=RESAMPLING,
        help=f"resize to the model input (default {DEFAULT_RESAMPLING}, with --device cuda bilinear-aa): pil-lanczos (Pillow's antialiased Lanczos, as the "
        "original code and the study), lanczos (OpenCV Lanczos-4, aliases when shrinking), area, linear, cubic on the host, "
        "or bilinear-aa, bicubic-aa on the model's device (antialiased torch; whole frames cross to the GPU, no host "
        "resize). Stored in the reference: run time always uses the same one",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="images, folders, globs, videos or phantom[:N]")
    p.add_argument("--out", required=True, help="reference file to write (JSON)")
    p.add_argument("--count", type=POSITIVE_INT, default=None, help="frames evenly spread over each source (default: all images, 10 per video)")
    add_calibration_arguments(p)
    add_geometry_arguments(p)
    add_model_arguments(p)


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """The options settings_from (and geometry_from, through --preset) reads, shared with `bonestream experiment`."""
    p.add_argument(
        "--preset", choices=sorted(GEOMETRY_PRESETS), default="study",
        help="study: tau 0.2 >=, 65%%, all heads; original: the original code's defaults (whole frame, short side 224 "
        "exactly, pil-lanczos, stride 4, tau 0.065 >, 75%%, heads 0,2,4,5, low-res saliency); options given override it",
    )
    p.add_argument("--k", type=number(int, 1, 64), default=None, help="fixed number of clusters (default: elbow rule)")
    p.add_argument("--tau", type=number(float, 0, 1), default=None, help="saliency threshold (overrides the preset)")
    p.add_argument("--votes", type=FRACTION, default=None, help="fraction of frames that must vote (overrides the preset)")
    p.add_argument("--heads", type=heads, default=None, help="attention heads for saliency: all, or e.g. 0,2,4,5 (default: the preset's)")
    p.add_argument(
        "--remove-outliers", action="store_true",
        help="leave out of clustering and voting the frames whose CLS key has a cosine to the mean CLS key below "
        "--outlier-threshold (the original's option; reported, and listed in the reference)",
    )
    p.add_argument("--outlier-threshold", type=number(float, -1, 1), default=0.7, help="CLS-key cosine of an inlier (default 0.7)")
    p.add_argument("--sample-interval", type=POSITIVE_INT, default=100, help="every n-th descriptor of a frame trains k-means (default 100)")


def settings_from(args: argparse.Namespace) -> CalibrationSettings:
    from calibration.calibrate import PRESETS, CalibrationSettings
    from calibration.clustering import KMeansSettings
    from calibration.voting import VoteSettings

    base = PRESETS[args.preset]
    voting = VoteSettings(
        tau=base.voting.tau if args.tau is None else args.tau,
        fraction=base.voting.fraction if args.votes is None else args.votes,
        strict=base.voting.strict,
    )
    chosen = base.heads if args.heads is None else (None if args.heads == "all" else args.heads)
    kmeans = KMeansSettings(k=args.k, sample_interval=args.sample_interval)
    return CalibrationSettings(
        kmeans=kmeans, voting=voting, heads=chosen, lowres_saliency=base.lowres_saliency, preset=args.preset,
        remove_outliers=args.remove_outliers, outlier_threshold=args.outlier_threshold,
    )


def geometry_from(args: argparse.Namespace) -> GeometryOptions:
    """The preset's geometry with every option the user gave in its place; on CUDA a device resampling unless one
    was chosen (models.resampling.device_resampling: the reference stores it, so run time uses it too)."""
    given = {f.name: getattr(args, f.name) for f in fields(GeometryOptions) if getattr(args, f.name, None) is not None}
    if on_cuda(getattr(args, "device", "cpu")):
        given.setdefault("resampling", device_resampling(args.device))
    return replace(GEOMETRY_PRESETS[getattr(args, "preset", "study")], **given)


def run(args: argparse.Namespace) -> int:
    from models.loader import load_model
    from pipeline.offline import calibrate_sources

    check_output_file(Path(args.out), "--out")
    model, identity = load_model(args.weights, progress=args.progress)
    announce_weights(identity.label)
    ref = calibrate_sources(
        args.sources, model, identity, count=args.count, geometry=geometry_from(args),
        settings=settings_from(args), progress=args.progress, device=args.device,
    )
    ref.save(args.out)
    g = ref.geometry
    print(f"reference {ref.id} -> {args.out}")
    print(f"  frames {len(ref.frames)}, roi {g.roi}, input {g.input_size[0]}x{g.input_size[1]}, stride {g.stride}, grid {g.grid[0]}x{g.grid[1]}")
    print(f"  k={ref.k} ({ref.settings['k_chosen_by']}), bone clusters {list(ref.foreground)} (votes {ref.votes}, need {ref.required_votes})")
    for outlier in ref.settings.get("outliers", []):
        print(f"  outlier left out: {outlier['frame']} (CLS cosine {outlier['cls_cosine']:.3f} < {args.outlier_threshold})")
    return 0
