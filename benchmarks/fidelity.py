"""Does ``bonestream calibrate --preset original`` reproduce the original co-segmentation? Prints and writes the
adjusted Rand index of the two partitions, k and the votes, on real frames.

    python -m benchmarks.fidelity [FRAMES...] [--weights SPEC] [--short-side 224] [--out fidelity.json]

Both sides run on the same weights (random:0 by default: the comparison is of the code, not of bone quality).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.original_coseg import Original, adjusted_rand_index, cosegment
from calibration.reference import Reference
from models.loader import load_model
from pipeline import cli
from pipeline.commands.numbers import SIDE
from pipeline.publish.files import write_json_atomic

SWEEP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ultrabones100k" / "sweep_frames"


def default_frames(count: int = 5) -> list[Path]:
    """``count`` sweep frames spread over the shared UltraBones sweep."""
    paths = sorted(SWEEP.glob("*.png"))
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)] if paths else []


def compare(frames: list[Path], weights: str, short_side: int) -> dict:
    """Run the CLI with the preset and the re-implementation on ``frames``; their partitions, k and votes."""
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = Path(tmp) / "original.json"
        start = time.perf_counter()
        argv = ["calibrate", *map(str, frames), "--preset", "original", "--short-side", str(short_side)]
        if cli.main([*argv, "--weights", weights, "--out", str(ref_path), "--no-progress"]) != 0:
            raise SystemExit("bonestream calibrate failed")
        cli_s = time.perf_counter() - start
        ref = Reference.load(ref_path)
    model, identity = load_model(weights)
    start = time.perf_counter()
    original = cosegment(model, frames, Original(load_size=short_side))
    original_s = time.perf_counter() - start
    ours = ref.calibration_labels.ravel()
    theirs = np.concatenate([labels.ravel() for labels in original.labels])
    return {
        "frames": [str(f) for f in frames],
        "weights": identity.label,
        "random_weights": identity.is_random,
        "short_side": short_side,
        "grid": list(ref.geometry.grid),
        "input_size": list(ref.geometry.input_size),
        "adjusted_rand_index": adjusted_rand_index(ours, theirs),
        "foreground_agreement": float((np.isin(ours, ref.foreground) == np.isin(theirs, original.salient)).mean()),
        "k": {"bonestream": ref.k, "original": original.k},
        "foreground": {"bonestream": list(ref.foreground), "original": original.salient.tolist()},
        "votes": {"bonestream": ref.votes, "original": original.votes.astype(int).tolist()},
        "seconds": {"bonestream": round(cli_s, 1), "original": round(original_s, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("frames", nargs="*", type=Path, help="image files (default: 5 frames of the shared UltraBones sweep)")
    p.add_argument("--weights", default="random:0", help="weights spec for both sides (default random:0)")
    p.add_argument("--short-side", type=SIDE, default=224, help="the original's load_size (default 224)")
    p.add_argument("--out", type=Path, default=Path("fidelity.json"), help="JSON report (default ./fidelity.json)")
    args = p.parse_args(argv)
    frames = args.frames or default_frames()
    if not frames:
        print(f"no frames given and none found in {SWEEP}", file=sys.stderr)
        return 2
    result = compare(frames, args.weights, args.short_side)
    write_json_atomic(args.out, result)
    stamp = " (RANDOM WEIGHTS: compares code paths, says nothing about bone)" if result["random_weights"] else ""
    print(json.dumps({k: result[k] for k in ("adjusted_rand_index", "foreground_agreement", "k", "grid")}) + stamp)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
