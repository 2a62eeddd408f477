"""Options several commands share, parsed the same way everywhere.

Like every module under pipeline/commands, it imports only light modules at its top (``bonestream --help`` then
loads no torch, OpenCV or faiss); what runs the model is imported inside the functions that use it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipeline.choices import BACKEND_CHOICES, PRECISIONS, REFINEMENTS

if TYPE_CHECKING:
    from calibration.reference import Reference
    from pipeline.segment.segmenter import BoneSegmenter

WEIGHTS_HELP = (
    "DINO ViT-S/8 weights: a checkpoint path, 'official' (default: $BONESTREAM_WEIGHTS, the user cache, then download), "
    "or 'random[:SEED]' for plumbing tests and latency work (every output is then stamped RANDOM WEIGHTS)"
)


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """Weights, device and progress: what every command that runs the ViT takes."""
    p.add_argument("--weights", default=None, metavar="SPEC", help=WEIGHTS_HELP)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Weights, device and progress, and the engine that labels frames (backend, precision)."""
    add_weights_arguments(p)
    p.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="torch",
        help="inference backend for labelling frames (default torch); auto times every backend that runs here, keeps the "
        "fastest and reports each fallback with its reason",
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="ViT precision: fp32, fp16, bf16, or int8 linear layers (onnxruntime on the CPU); LayerNorm and labelling stay "
        "fp32; check reduced-precision engines with `bonestream export` first",
    )


def add_refine_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refine", choices=REFINEMENTS, default=None,
        help="refine each mask with GrabCut on the host, as the original's last step (7x7 erosion bands, 5 iterations; "
        "costs milliseconds per frame: see the README); default off",
    )


def weights_for(reference: Reference, requested: str | None) -> str | None:
    """Random references need the user to ask for random weights: never use them silently."""
    from calibration.reference import ReferenceError

    if requested is None and reference.is_random:
        raise ReferenceError(
            f"the reference was calibrated with RANDOM weights ({reference.weights_label}); "
            f"pass --weights {reference.weights_label} to run it (plumbing only)"
        )
    return requested


def load_segmenter(args: argparse.Namespace) -> BoneSegmenter:
    """The segmenter the options ask for; prints the backend choice and every fallback."""
    from calibration.reference import Reference
    from pipeline.segment.segmenter import BoneSegmenter

    reference = Reference.load(args.reference)
    seg = BoneSegmenter.create(
        reference, weights_for(reference, args.weights), device=args.device, precision=args.precision, backend=args.backend,
        batch=getattr(args, "batch_size", 1), refine=getattr(args, "refine", None), progress=args.progress,
    )
    print(seg.selection.describe())
    return seg


def announce_weights(label: str) -> None:
    """Which weights run, on stdout. Random weights are also said once on stderr, by the loader (models.weights)."""
    print(f"weights: {label}")
