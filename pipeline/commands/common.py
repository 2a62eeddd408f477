"""Options several commands share, parsed the same way everywhere.

Like every module under pipeline/commands, it imports only light modules at its top (``bonestream --help`` then
loads no torch, OpenCV or faiss); what runs the model is imported inside the functions that use it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable, Sequence

from pipeline.choices import BACKEND_CHOICES, PRECISION_CHOICES, REFINEMENTS, SDPA_BACKENDS, default_precision
from pipeline.commands.numbers import COUNT, POSITIVE_INT

if TYPE_CHECKING:
    from calibration.reference import Reference
    from pipeline.capture.frame import Source
    from pipeline.capture.ranges import FrameRange
    from pipeline.infer.backend import Backend
    from pipeline.infer.select import Gate
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
        "--precision", choices=PRECISION_CHOICES, default=None,
        help="ViT precision (default fp32 on the CPU, bf16 on CUDA): fp32 (TF32 matrix products on CUDA), fp16, bf16, int8 linear "
        "layers (onnxruntime on the CPU), or auto (fp32 and every precision this device runs natively, timed; a reduced one "
        "only once it passed the parity gate); labelling stays fp32, LayerNorm computes in fp32 for fp16",
    )
    p.add_argument(
        "--sdpa", choices=SDPA_BACKENDS, default="auto",
        help="attention kernel of the torch backends: auto (torch's choice, default), or cudnn, flash, efficient, math "
        "forced (a kernel that cannot run here fails at build); for A/B measurements on a GPU",
    )


def add_refine_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refine", choices=REFINEMENTS, default=None,
        help="refine each mask with GrabCut on the host, as the original's last step (7x7 erosion bands, 5 iterations; "
        "costs milliseconds per frame: see the README); default off",
    )


def weights_for(reference: Reference, requested: str | None) -> str | None:
    """The weights to load: the reference's own when none are named (Reference.weights_spec). A named random seed
    that differs is refused here, before any model is built; a checkpoint's sha256 is compared once it is read."""
    from models.weights import random_label

    if requested is None:
        return reference.weights_spec()
    if (label := random_label(requested)) is not None:
        reference.check_weights(label, f"--weights {requested}")
    return requested


def add_range_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", type=COUNT, default=0, metavar="N", help="first frame id to process, 0-based (default 0)")
    p.add_argument("--stop", type=POSITIVE_INT, default=None, metavar="N", help="frame id to stop before (exclusive; default: the end)")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="process at most N frames")


def frame_range(args: argparse.Namespace) -> FrameRange:
    from pipeline.capture.ranges import FrameRange

    return FrameRange(args.start, args.stop, args.max_frames)


def reference_for(args: argparse.Namespace, sources: Sequence[Source]) -> Reference:
    """The reference, its weights and the sources' frame size checked before any model loads; fitted to that size
    when the calibrated imaging area fits it (Geometry.at_frame_size)."""
    from calibration.reference import Reference

    reference = Reference.load(args.reference)
    weights_for(reference, args.weights)
    return fit_reference(reference, sources)


def fit_reference(reference: Reference, sources: Sequence[Source]) -> Reference:
    """``reference`` fitted to the frame size its sources share (Geometry.at_frame_size): refused when the
    calibrated imaging area does not fit a source, or when the sources differ in size."""
    from calibration.reference import ReferenceError
    from pipeline.capture.open import frame_size

    sizes = {s.name: size for s in sources if (size := frame_size(s)) is not None}
    for name, size in sizes.items():
        reference.geometry.at_frame_size(size, name)
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{name}: {w}x{h}" for name, (h, w) in sizes.items())
        raise ReferenceError(f"sources differ in frame size ({detail}); label each size in a run of its own")
    return reference.at_frame_size(sizes.popitem()[1], "source") if sizes else reference


def precision_for(args: argparse.Namespace) -> str:
    """The precision asked for, or the device's default (pipeline.choices.default_precision)."""
    return args.precision or default_precision(args.device)


def add_gate_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration-sources", action="append", default=None, metavar="SOURCE",
        help="a source the reference was calibrated on (repeat for several): a reduced-precision engine (fp16, bf16, int8, or auto's candidates) is checked on its calibration frames "
        "(the parity gate of `bonestream export`) before the first frame, unless a verdict is recorded already",
    )


def gated(args: argparse.Namespace, reference: Reference, build: Callable[[str, Gate], list[Backend]]) -> str:
    """The precision the engines run in, built by ``build(precision, gate)`` and passed through the parity gate
    before any frame: a refused engine stops the run (one line with the figures); an unchecked one stops it when a
    precision was named, and falls back to fp32 when it was the CUDA default or auto's choice (auto chooses at the
    first static batch size; the others may lack a verdict). ``build`` gets the same gate, so auto keeps only
    candidates that passed."""
    from pipeline.commands.export import calibration_frames
    from pipeline.infer.cache import EngineCache
    from pipeline.infer.gate import ParityUnchecked, gate, refusal

    precision = precision_for(args)
    sources = getattr(args, "calibration_sources", None)
    frames = calibration_frames(sources, reference) if sources and precision != "fp32" else None
    cache = EngineCache(getattr(args, "cache_dir", None))

    def refused(backend: Backend) -> str | None:
        return refusal(backend, backend.deployment, cache, frames, reference.calibration_labels)

    backends = build(precision, refused)
    try:
        for backend in backends:
            if (result := gate(backend, backend.deployment, cache, frames, reference.calibration_labels)) is not None:
                print(result.describe())
    except ParityUnchecked as exc:
        if args.precision not in (None, "auto"):
            raise
        print(f"{exc}; running fp32 instead ({backends[0].precision} runs once it has passed)")
        build("fp32", refused)
        return "fp32"
    return backends[0].precision


def load_segmenter(args: argparse.Namespace, reference: Reference) -> BoneSegmenter:
    """The segmenter the options ask for, behind the parity gate (``gated``); prints the backend choice and every
    fallback."""
    from models.loader import load_model
    from pipeline.infer.select import BackendSpec
    from pipeline.segment.segmenter import BoneSegmenter

    model, identity = load_model(weights_for(reference, args.weights), progress=args.progress)
    built: list[BoneSegmenter] = []

    def build(precision: str, gate: Gate) -> list[Backend]:
        spec = BackendSpec(args.backend, args.device, precision, getattr(args, "batch_size", 1), sdpa=args.sdpa)
        built.append(BoneSegmenter.from_model(reference, model, identity, spec, refine=getattr(args, "refine", None), gate=gate))
        return [built[-1].backend]

    gated(args, reference, build)
    seg = built[-1]
    print(seg.selection.describe())
    return seg


def announce_weights(label: str) -> None:
    """Which weights run, on stdout. Random weights are also said once on stderr, by the loader (models.weights)."""
    print(f"weights: {label}")
