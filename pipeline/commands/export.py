"""bonestream export SOURCE... --reference REF: build engines ahead of time, each behind the parity gate.

The sources are the ones the reference was calibrated on: its frames are found there by name and every engine's
keys and labels are compared with fp32 torch on them. A degraded engine is refused with the figures (exit 1),
and the refusal is recorded so run time refuses it too.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from itertools import product
from typing import TYPE_CHECKING, Sequence

from models.errors import BonestreamError
from pipeline.commands.common import add_model_arguments, announce_weights, precision_for, weights_for
from pipeline.commands.numbers import POSITIVE_INT, number

if TYPE_CHECKING:
    import numpy as np

    from calibration.reference import Reference

ENGINE_BACKENDS = ("tensorrt", "onnxruntime-trt", "openvino", "onnxruntime")  # what `--backend auto` builds: the ones with engine files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="the images, folders or videos the reference was calibrated on")
    p.add_argument("--reference", required=True, help="reference file from `bonestream calibrate`")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1, help="static batch size of the engines (default 1)")
    p.add_argument("--cache-dir", default=None, help="engine cache folder (default: the user cache's engines/)")
    p.add_argument("--min-cosine", type=number(float, -1, 2), default=None, help="parity: mean key cosine (default 0.99)")
    p.add_argument("--min-agreement", type=number(float, 0, 2), default=None, help="parity: label and mask agreement (default 0.99)")
    add_model_arguments(p)
    p.set_defaults(backend="auto")  # export every engine backend that runs on the device unless one is named


def calibration_frames(specs: Sequence[str], reference: Reference) -> np.ndarray:
    """The reference's calibration frames, found by name in ``specs``, as its geometry's uint8 planes, in its order."""
    from pipeline.capture.open import open_sources

    sources = open_sources(specs)
    try:
        if live := [s.name for s in sources if s.live]:  # a device never replays the frames a reference was made of
            raise BonestreamError(f"{live[0]}: a live source cannot hold a reference's calibration frames; pass the recorded sources")
        wanted = set(reference.frames)
        found: dict[str, np.ndarray] = {}
        for source in sources:
            for frame in source:
                if frame.name in wanted:
                    found[frame.name] = frame.image
                if len(found) == len(wanted):
                    break
    finally:
        for source in sources:
            source.close()
    missing = [name for name in reference.frames if name not in found]
    if missing:
        raise BonestreamError(
            f"{len(missing)} of the reference's {len(reference.frames)} calibration frames are not in the sources "
            f"(first missing: {missing[0]}); pass the sources it was calibrated on"
        )
    return reference.geometry.planes([found[name] for name in reference.frames], list(reference.frames))


def run(args: argparse.Namespace) -> int:
    import torch

    from calibration.reference import Reference
    from models.loader import load_model
    from pipeline.infer.backend import BackendUnavailable
    from pipeline.infer.cache import EngineCache
    from pipeline.infer.deployment import Deployment
    from pipeline.infer.parity import ParityThresholds, check_parity, record_verdict
    from pipeline.infer.select import CANDIDATES, BackendSpec, make_backend, precision_candidates, runs_at

    reference = Reference.load(args.reference)
    frames = calibration_frames(args.sources, reference)
    model, identity = load_model(weights_for(reference, args.weights), progress=args.progress)
    announce_weights(identity.label)
    deployment = Deployment.from_reference(model, identity.label, reference)
    cache = EngineCache(args.cache_dir)
    given = {"key_cosine": args.min_cosine, "agreement": args.min_agreement}
    thresholds = ParityThresholds(**{name: value for name, value in given.items() if value is not None})
    device_type = torch.device(args.device).type
    asked = precision_for(args)
    # --precision auto records a verdict for every pair `run --backend auto --precision auto` may choose
    engines = CANDIDATES[device_type] if asked == "auto" else [n for n in ENGINE_BACKENDS if n in CANDIDATES[device_type]]
    names = engines if args.backend == "auto" else [args.backend]
    if asked == "auto":  # fp32 needs no verdict
        precisions, lacking = precision_candidates(args.device)
        precisions = [p for p in precisions if p != "fp32"]
        if not precisions:
            print("nothing to check: this device runs only fp32 natively, which needs no parity verdict")
            for fallback in lacking:
                print(f"  {fallback.backend}: {fallback.reason}")
            return 0
    else:
        precisions = [asked]
    refused = built = 0
    for name, precision in product(names, precisions):
        if not runs_at(name, precision, args.device):
            print(f"skipped {name} {precision}: {name} builds no {precision} engine")
            continue
        spec = BackendSpec(name, args.device, precision, args.batch_size, sdpa=args.sdpa)
        try:
            engine = make_backend(spec, deployment, cache)
            keys = make_backend(replace(spec, outputs="keys"), deployment, cache)
        except BackendUnavailable as exc:
            if args.backend != "auto":
                raise
            print(f"skipped {name} {precision}: {exc}")
            continue
        result = check_parity(engine, keys, deployment, frames, calibration_labels=reference.calibration_labels, thresholds=thresholds)
        record_verdict(cache, deployment, engine, result)
        print(result.describe())
        built += 1
        refused += not result.passed
    if not built:
        raise BackendUnavailable(f"no engine backend runs on {args.device}")
    print(f"engines in {cache.root}")
    return 1 if refused and asked != "auto" else 0  # auto: a refusal only takes that candidate out of run's choice
