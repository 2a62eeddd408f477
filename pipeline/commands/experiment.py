"""bonestream experiment sizes|pairs|noise ... --out DIR: the study's experiments, scored against truth masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.calibrate import add_calibration_arguments, add_geometry_arguments, geometry_from, settings_from
from pipeline.commands.common import add_model_arguments, announce_weights
from pipeline.commands.numbers import COUNT, POSITIVE_INT, listed, number
from pipeline.commands.paths import check_output_dir
from pipeline.study.noise import DEFAULT_SCALE, SCALES, describe_scale

EXPERIMENTS = {
    "sizes": "co-segment random reference sets of each size, Dice/IoU per set size",
    "pairs": "same-domain vs cross-domain (domains calibrated together) Dice/IoU per domain",
    "noise": "Dice/IoU of co-segmentation on frames with additive white noise I + eps*N(0,1), per eps",
}


def domain(text: str) -> tuple[str, str, str]:
    """NAME=FRAMES:MASKS (the last ':' separates the mask folder)."""
    name, eq, rest = text.partition("=")
    frames, colon, masks = rest.rpartition(":")
    if not (eq and colon and name and frames and masks):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FRAMES:MASKS")
    return name, frames, masks


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    parsers = {name: sub.add_parser(name, help=text, description=text) for name, text in EXPERIMENTS.items()}
    for name in ("sizes", "noise"):
        parsers[name].add_argument("frames", metavar="FRAMES", help="folder or glob of labelled frames (one size)")
        parsers[name].add_argument("--truth", required=True, help="folder of truth masks named as the frames")
    s = parsers["sizes"]
    s.add_argument("--sizes", type=listed(POSITIVE_INT), default=[2, 3, 5, 10], help="reference-set sizes (default 2,3,5,10); a size above the labelled frames is refused")
    s.add_argument("--repeats", type=POSITIVE_INT, default=3, help="random sets per size (default 3; every set when fewer exist)")
    s.add_argument("--held-out", action="store_true", help="also label the labelled frames outside each set with its reference (inductive), scored apart")
    d = parsers["pairs"]
    d.add_argument("--domain", type=domain, action="append", required=True, metavar="NAME=FRAMES:MASKS", help="a domain's frames and truth masks; give two or more")
    d.add_argument("--n", type=POSITIVE_INT, default=5, help="frames per domain (default 5)")
    d.add_argument("--repeats", type=POSITIVE_INT, default=1, help="random draws of the n frames (default 1)")
    n = parsers["noise"]
    n.add_argument("--eps", type=listed(number(float, 0, 100)), default=[0, 0.5, 1, 1.5, 2, 2.5, 3], help="noise levels (default 0,0.5,1,1.5,2,2.5,3)")
    n.add_argument(
        "--scale", choices=sorted(SCALES), default=DEFAULT_SCALE,
        help=f"what a unit of eps is: {describe_scale('normalised')} (default); {describe_scale('unit')}",
    )
    n.add_argument("--n", type=POSITIVE_INT, default=5, help="frames, evenly spread over the labelled set (default 5)")
    for q in parsers.values():
        q.add_argument("--out", required=True, type=Path, help="output folder: experiment.json, experiment.md, PNG figures")
        q.add_argument("--seed", type=COUNT, default=0, help="seed of the random sets and the noise (default 0)")
        add_calibration_arguments(q)
        add_geometry_arguments(q)
        add_model_arguments(q)


def _inputs(args: argparse.Namespace) -> dict:
    """Every labelled frame, checked against its mask and the requested set sizes, before the model loads."""
    from pipeline.study.labelled import StudyError, check_count, load_labelled

    if args.experiment == "pairs":
        names = [name for name, _, _ in args.domain]
        if len(set(names)) != len(names) or len(names) < 2:
            raise StudyError(f"--domain: give two or more domains with distinct names (got {', '.join(names)})")
        domains = {name: load_labelled(frames, masks, f"domain {name}") for name, frames, masks in args.domain}
        for name, frames in domains.items():
            check_count(frames, args.n, f"--domain {name}")
        return {"domains": domains}
    frames = load_labelled(args.frames, args.truth)
    for size in args.sizes if args.experiment == "sizes" else [args.n]:
        check_count(frames, size, f"--sizes {size}" if args.experiment == "sizes" else "--n")
    return {"frames": frames}


def run(args: argparse.Namespace) -> int:
    from models.loader import load_model
    from pipeline.infer.select import BackendSpec
    from pipeline.study.cosegment import Cosegmenter
    from pipeline.study.experiments import run_noise, run_pairs, run_sizes
    from pipeline.study.report import markdown, write_experiment

    check_output_dir(args.out, "--out")
    inputs = _inputs(args)
    settings = settings_from(args)
    model, identity = load_model(args.weights, progress=args.progress)
    announce_weights(identity.label)
    # fp32 unless a precision is named: the experiments' references exist only in memory, so no parity gate can check one
    coseg = Cosegmenter(model, identity, geometry_from(args), settings, BackendSpec(args.backend, args.device, args.precision or "fp32", sdpa=args.sdpa))
    common = {"seed": args.seed, "progress": args.progress}
    if args.experiment == "sizes":
        result = run_sizes(coseg, inputs["frames"], args.sizes, repeats=args.repeats, held_out=args.held_out, **common)
    elif args.experiment == "pairs":
        result = run_pairs(coseg, inputs["domains"], args.n, repeats=args.repeats, **common)
    else:
        result = run_noise(coseg, inputs["frames"], args.eps, scale=args.scale, n=args.n, **common)
    paths = write_experiment(result, args.out)
    print(markdown(result.doc))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
