"""Options several commands share, parsed the same way everywhere."""

from __future__ import annotations

import argparse

from calibration.reference import Reference, ReferenceError
from pipeline.segment.segmenter import BoneSegmenter

WEIGHTS_HELP = (
    "DINO ViT-S/8 weights: a checkpoint path, 'official' (default: $BONESTREAM_WEIGHTS, the user cache, then download), "
    "or 'random[:SEED]' for plumbing tests and latency work (every output is then stamped RANDOM WEIGHTS)"
)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="SPEC", help=WEIGHTS_HELP)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def weights_for(reference: Reference, requested: str | None) -> str | None:
    """Random references need the user to ask for random weights: never use them silently."""
    if requested is None and reference.is_random:
        raise ReferenceError(
            f"the reference was calibrated with RANDOM weights ({reference.weights_label}); "
            f"pass --weights {reference.weights_label} to run it (plumbing only)"
        )
    return requested


def load_segmenter(args: argparse.Namespace, precision: str = "fp32") -> BoneSegmenter:
    reference = Reference.load(args.reference)
    return BoneSegmenter.create(
        reference, weights_for(reference, args.weights), device=args.device, precision=precision, progress=args.progress
    )


def announce_weights(label: str, warning: str | None) -> None:
    print(f"weights: {label}" + (f"  ** {warning} **" if warning else ""))
