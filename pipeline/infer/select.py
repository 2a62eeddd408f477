"""Backends by name, and ``auto``: build every candidate that can run here, time a few calls, keep the fastest.

Nothing falls back silently: ``auto`` reports which backend it chose, how long each candidate took, and every
candidate it could not use with the reason; an explicitly named backend that cannot run is an error. Engines the
parity gate refused (``bonestream export``) are refused at selection too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Callable

import numpy as np
import torch

from pipeline.choices import BACKEND_CHOICES
from pipeline.infer.backend import Backend, BackendUnavailable, TorchBackend, require_cuda
from pipeline.infer.cache import EngineCache
from pipeline.infer.cpu_features import cpu_features
from pipeline.infer.deployment import Deployment
from pipeline.infer.gate import refusal
from pipeline.infer.onnx_backend import OnnxRuntimeBackend
from pipeline.infer.openvino_backend import OpenVinoBackend
from pipeline.infer.parity import recorded_verdict
from pipeline.infer.tensorrt_backend import TensorRTBackend

# auto's candidates, most promising first (ties in the timing go to the earlier one)
CANDIDATES = {
    "cpu": ("openvino", "onnxruntime", "torch"),
    "cuda": ("tensorrt", "onnxruntime-trt", "onnxruntime", "torch-compile", "torch"),
}
TRIALS = 3  # timed calls per candidate after one warm-up call
AUTO_PRECISIONS = ("fp32", "bf16", "int8", "fp16")  # what --precision auto tries, where the device runs it natively
Gate = Callable[[Backend], "str | None"]  # why a reduced-precision engine is refused (the parity gate), or None


@dataclass(frozen=True)
class BackendSpec:
    """Which backend to build: a name (or auto), the device, the ViT's precision, the static batch, what it returns."""

    name: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    outputs: str = "fused"  # or "keys" (for the parity gate)
    sdpa: str = "auto"  # attention kernel of the torch backends (pipeline.choices.SDPA_BACKENDS)


def make_backend(spec: BackendSpec, deployment: Deployment, cache: EngineCache | None = None) -> Backend:
    """One backend by name; raises BackendUnavailable (with the reason) when it cannot run here."""
    cache = cache or EngineCache()
    name, device, precision, batch, outputs = spec.name, spec.device, spec.precision, spec.batch, spec.outputs
    if precision == "int8" and name != "onnxruntime":
        raise BackendUnavailable(f"{name}: int8 is built for onnxruntime on the CPU only (quantised ONNX graph)")
    if name in ("torch", "torch-compile"):
        if torch.device(device).type != "cpu":
            require_cuda(name, device)
        return TorchBackend(deployment, device, precision, batch, mode="eager" if name == "torch" else "compile", outputs=outputs, sdpa=spec.sdpa)
    if name in ("onnxruntime", "onnxruntime-trt"):
        return OnnxRuntimeBackend(deployment, name, device, precision, batch, outputs, cache)
    if name == "tensorrt":
        return TensorRTBackend(deployment, device, precision, batch, outputs, cache)
    if name == "openvino":
        return OpenVinoBackend(deployment, device, precision, batch, outputs, cache)
    raise ValueError(f"backend {name!r} is not one of {BACKEND_CHOICES}")


def usable_backend(spec: BackendSpec, deployment: Deployment, cache: EngineCache) -> Backend:
    """make_backend, refusing engines the parity gate refused (``bonestream export`` records its verdicts)."""
    backend = make_backend(spec, deployment, cache)
    verdict = recorded_verdict(cache, deployment, backend)
    if verdict is not None and not verdict["passed"]:
        raise BackendUnavailable(
            f"{spec.name} {spec.precision}: refused by the parity gate (key cosine {verdict['key_cosine']:.4f}, "
            f"labels {verdict['label_agreement']:.2%}, mask {verdict['mask_agreement']:.2%}); use another precision or backend"
        )
    return backend


@dataclass(frozen=True)
class Fallback:
    backend: str
    reason: str


@dataclass
class Selection:
    backend: Backend
    requested: str
    measured_ms: dict[str, float] = field(default_factory=dict)  # median per call, per working candidate
    fallbacks: list[Fallback] = field(default_factory=list)

    def describe(self) -> str:
        b = self.backend
        lines = [f"backend: {b.name} ({b.device}, {b.precision}, batch {b.batch})" + (" chosen by auto" if self.requested == "auto" else "")]
        if self.measured_ms:
            lines.append("  measured: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(self.measured_ms.items(), key=lambda kv: kv[1])))
        lines += [f"  fallback: {f.backend} unavailable: {f.reason}" for f in self.fallbacks]
        return "\n".join(lines)


def time_backend(backend: Backend, frames: np.ndarray, trials: int = TRIALS) -> float:
    """Median ms per call after one warm-up call."""
    backend(frames)
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        backend(frames)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def precision_candidates(device: str) -> tuple[list[str], list[Fallback]]:
    """What ``--precision auto`` tries on ``device``: fp32 (the reference) and every reduced precision that runs
    natively there; on a CPU the others are fallbacks that say which unit is missing (cpu_features)."""
    if torch.device(device).type != "cpu":
        return list(AUTO_PRECISIONS), []
    features = cpu_features()
    kept, fallbacks = ["fp32"], []
    for precision in AUTO_PRECISIONS[1:]:
        reason = features.lacks(precision)
        if reason is None:
            kept.append(precision)
        else:
            fallbacks.append(Fallback(precision, reason))
    return kept, fallbacks


def runs_at(name: str, precision: str, device: str) -> bool:
    """Whether backend ``name`` builds ``precision`` at all on ``device`` (auto skips the pairs that never exist)."""
    if precision == "int8":
        return name == "onnxruntime" and torch.device(device).type == "cpu"
    return not (precision == "bf16" and name.startswith("onnxruntime"))  # ONNX Conv has no bfloat16 (opset 18)


def select_backend(
    spec: BackendSpec, deployment: Deployment, cache: EngineCache | None = None, trials: int = TRIALS, gate: Gate | None = None
) -> Selection:
    """``spec.name`` itself, or for ``auto`` the fastest candidate that builds and runs on ``spec.device``.

    ``spec.precision`` ``auto`` tries every precision of precision_candidates too; a reduced-precision candidate is
    then kept only if ``gate`` (the parity gate, pipeline.infer.gate) passes it, by default only with a passing
    verdict recorded by ``bonestream export``. With a reduced precision named, auto prefers the candidates the gate
    passes and otherwise keeps the fastest (the caller's gate then stops or falls back, naming why).
    """
    cache = cache or EngineCache()
    gate = gate or (lambda backend: refusal(backend, deployment, cache, None, None))  # no frames: recorded verdicts only
    if spec.name != "auto" and spec.precision != "auto":
        return Selection(usable_backend(spec, deployment, cache), spec.name)
    names = CANDIDATES[torch.device(spec.device).type] if spec.name == "auto" else (spec.name,)
    precisions, fallbacks = precision_candidates(spec.device) if spec.precision == "auto" else ([spec.precision], [])
    frames = np.random.default_rng(0).integers(0, 256, deployment.plane_shape(spec.batch), dtype=np.uint8)
    working: dict[str, Backend] = {}
    measured: dict[str, float] = {}
    unchecked: set[str] = set()  # a named reduced precision's candidates the gate did not pass
    for name, precision in product(names, precisions):
        if not runs_at(name, precision, spec.device):
            continue
        label = name if spec.precision != "auto" else f"{name} {precision}"
        try:
            backend = usable_backend(replace(spec, name=name, precision=precision), deployment, cache)
            if precision != "fp32" and (refusal := gate(backend)) is not None:
                if spec.precision == "auto":
                    raise BackendUnavailable(refusal)
                unchecked.add(label)
            measured[label] = time_backend(backend, frames, trials)
            working[label] = backend
        except Exception as exc:  # any candidate that fails to build or run is a reported fallback, not a crash
            fallbacks.append(Fallback(label, f"{type(exc).__name__}: {exc}"))
    if not working:
        raise BackendUnavailable("no backend runs here:\n" + "\n".join(f"  {f.backend}: {f.reason}" for f in fallbacks))
    fastest = min(working, key=lambda label: (label in unchecked, measured[label]))
    return Selection(working[fastest], "auto", measured, fallbacks)
