"""bonestream demo: calibrate on the synthetic phantom, segment it, write an overlay video and score it.

Runs on a fresh offline machine: without the official weights it says so in one line and uses random
weights, and every output is stamped as such.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.common import announce_weights
from pipeline.commands.numbers import POSITIVE_INT, SIDE
from pipeline.geometry_options import GeometryOptions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("bonestream-demo"), help="output folder (default ./bonestream-demo)")
    p.add_argument("--frames", type=POSITIVE_INT, default=60, help="phantom frames to segment (default 60)")
    p.add_argument("--count", type=POSITIVE_INT, default=8, help="reference frames for calibration (default 8)")
    p.add_argument("--short-side", type=SIDE, default=160, help="model input short side (default 160; 224 is the study's)")
    p.add_argument("--weights", default=None, metavar="SPEC", help="weights spec as for calibrate (default: official if obtainable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _model(args: argparse.Namespace):
    from models.loader import load_model
    from models.weights import WeightsUnavailable

    if args.weights is not None:
        return load_model(args.weights, progress=args.progress)
    try:
        return load_model(None, progress=args.progress)
    except WeightsUnavailable as exc:
        print(f"official DINO weights unavailable ({str(exc).splitlines()[0]}); using random:0 instead")
        return load_model("random:0", progress=args.progress)


def run(args: argparse.Namespace) -> int:
    from pipeline.capture.phantom import PhantomConfig, write_phantom
    from pipeline.evaluate import evaluate_dirs, write_report
    from pipeline.offline import calibrate_sources, segment_sources
    from pipeline.segment.segmenter import BoneSegmenter

    model, identity = _model(args)
    announce_weights(identity.label)
    phantom_dir = args.out / "phantom"
    write_phantom(phantom_dir, args.frames, PhantomConfig(n_frames=args.frames))
    source = f"phantom:{args.frames}"
    ref = calibrate_sources(
        [source], model, identity, count=args.count, geometry=GeometryOptions(roi="full", short_side=args.short_side),
        progress=args.progress, device=args.device,
    )
    ref.save(args.out / "reference.json")
    print(f"calibrated on {len(ref.frames)} frames: k={ref.k}, bone clusters {list(ref.foreground)}")
    seg = BoneSegmenter.create(ref, identity.label if identity.is_random else args.weights, device=args.device, progress=args.progress)
    summary = segment_sources(seg, [source], args.out, progress=args.progress)
    report = evaluate_dirs(args.out, phantom_dir / "masks", truth_kind="region")  # the phantom's truth is bone regions
    write_report(report, args.out / "evaluation.json")
    print(report.table(per_image=False))
    print(f"overlay video: {args.out / 'phantom_overlay.mp4'}  summary: {summary}")
    return 0
