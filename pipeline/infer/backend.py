"""Inference backends behind one call: uint8 planes -> (patch mask, margin), each built and made ready up front.

This module holds the protocol and the PyTorch backend; ONNX Runtime and TensorRT live next to it, and
``select.make_backend`` builds any of them by name. A backend builds its own engine on its device from the
deployment (``graph.engine_module``): it never moves or changes a module it was handed.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from models.errors import BonestreamError
from models.placement import sdpa_context
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import check_precision, engine_module
from pipeline.infer.staging import Compute, StagedBackend, Staging, ready


class BackendUnavailable(BonestreamError):
    """A backend cannot run here (library, device or provider missing); the message says which and why."""


class Backend(Protocol):
    name: str
    device: str
    precision: str
    batch: int
    staging: Staging  # the static uint8 input on the device
    compute: Compute  # static input -> device outputs (valid until the next call)
    last_timings_ms: dict[str, float]  # host_to_device, model_labelling, device_to_host of the last call

    def __call__(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def require_cuda(name: str, device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type != "cuda":
        raise BackendUnavailable(f"{name}: runs on CUDA devices only, not {device}")
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{name}: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if (dev.index or 0) >= torch.cuda.device_count():
        raise BackendUnavailable(f"{name}: {device} does not exist ({torch.cuda.device_count()} CUDA devices here)")
    return dev


_compiled = itertools.count(1)  # torch-compile engines built in this process
_compile_lock = threading.Lock()


def compile_engine(module: nn.Module) -> Compute:
    """``torch.compile`` of one engine, any number of them per process. Every engine is a recompile of the same
    ``EngineGraph.forward``; dynamo keeps ``recompile_limit`` (8) versions per function and, under ``fullgraph``,
    the next one is an error, so the limits grow with the engines built (each engine's calls match its own entry)."""
    config = torch._dynamo.config
    with _compile_lock:
        engines = next(_compiled)
        for name in ("recompile_limit", "accumulated_recompile_limit"):  # named so since torch 2.6
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), engines + 8))
    return torch.compile(module, fullgraph=True, dynamic=False)


def forcing_sdpa(compute: Compute, name: str) -> Compute:
    """``compute`` with the attention kernel ``name`` forced (on CUDA that is what the graph captures)."""
    sdpa_context(name)  # a bad name fails here

    def run(planes: torch.Tensor) -> Sequence[torch.Tensor]:
        with sdpa_context(name):
            return compute(planes)

    return compute if name == "auto" else run


@dataclass
class TorchBackend(StagedBackend):
    """PyTorch on CPU or CUDA, ``mode`` eager or compile (torch.compile, inductor); on CUDA either is captured
    into a CUDA graph at the static batch size when built. Reduced precision casts the ViT once, at build
    (labelling stays fp32; LayerNorm computes in fp32 for fp16)."""

    deployment: Deployment
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    mode: str = "eager"
    outputs: str = "fused"
    sdpa: str = "auto"  # pipeline.choices.SDPA_BACKENDS: torch's choice, or one attention kernel forced
    name: str = field(init=False)
    last_timings_ms: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.mode not in ("eager", "compile"):
            raise ValueError(f"torch mode {self.mode!r} is not eager or compile")
        self.name = "torch" if self.mode == "eager" else "torch-compile"
        module = engine_module(self.deployment, self.precision, self.outputs, self.device)
        compute = forcing_sdpa(compile_engine(module) if self.mode == "compile" else module, self.sdpa)
        self.staging = Staging(self.device, self.deployment.plane_shape(self.batch))
        try:
            self.compute = ready(compute, self.staging.input)
        except RuntimeError as exc:
            if self.sdpa == "auto" or not any(words in str(exc) for words in ("No available kernel", "No viable backend")):
                raise
            # a forced kernel that cannot run these shapes, dtype or device ("No available kernel"): one line, not a traceback
            raise BackendUnavailable(f"--sdpa {self.sdpa}: {str(exc).splitlines()[0]}") from None
