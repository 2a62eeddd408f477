"""Inference backends behind one call: a float32 batch in host memory -> (patch mask, margin) in host memory.

This module holds the protocol and the PyTorch backend; ONNX Runtime and TensorRT live next to it, and
``select.make_backend`` builds any of them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from models.errors import BonestreamError
from pipeline.infer.graph import SegmentationGraph, check_precision, engine_module
from pipeline.infer.staging import Compute, StagedBackend, Staging


CUDA_GRAPH_WARMUP = 3  # eager runs on a side stream before capture, as torch.cuda.graphs asks


class BackendUnavailable(BonestreamError):
    """A backend cannot run here (library, device or provider missing); the message says which and why."""


class Backend(Protocol):
    name: str
    device: str
    precision: str
    batch: int
    last_timings_ms: dict[str, float]  # host_to_device, model_labelling, device_to_host of the last call

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def require_cuda(name: str, device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type != "cuda":
        raise BackendUnavailable(f"{name}: runs on CUDA devices only, not {device}")
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{name}: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    return dev


def capture_cuda_graph(compute: Compute, static_input: torch.Tensor) -> Compute:
    """Replay ``compute`` as one CUDA graph on a static input: a ViT-S forward is ~150 kernels, and at batch 1
    launching them costs about as much as running them."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(CUDA_GRAPH_WARMUP):
            compute(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_outputs = compute(static_input)

    def replay(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        graph.replay()
        return tuple(static_outputs)

    return replay


@dataclass
class TorchBackend(StagedBackend):
    """PyTorch on CPU or CUDA, ``mode`` eager or compile (torch.compile, inductor); on CUDA either is captured
    into a CUDA graph. Reduced precision casts the ViT (LayerNorm and labelling stay fp32).

    The graph is specialised to the input size of the first batch (static shape from then on).
    """

    graph: SegmentationGraph
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    mode: str = "eager"
    outputs: str = "fused"
    name: str = field(init=False)
    last_timings_ms: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.mode not in ("eager", "compile"):
            raise ValueError(f"torch mode {self.mode!r} is not eager or compile")
        self.name = "torch" if self.mode == "eager" else "torch-compile"
        self.graph = self.graph.to(self.device).eval()
        self._prepared: tuple[tuple[int, ...], Staging, Compute] | None = None

    def _prepare(self, shape: tuple[int, ...]) -> tuple[Staging, Compute]:
        if self._prepared is None or self._prepared[0] != shape:
            compute: Compute = engine_module(self.graph, shape[-2:], self.precision, self.outputs)
            if self.mode == "compile":
                compute = torch.compile(compute, fullgraph=True, dynamic=False)
            staging = Staging(torch.device(self.device), shape)
            if staging.cuda:
                compute = capture_cuda_graph(compute, staging.input)
            self._prepared = (shape, staging, compute)
        return self._prepared[1], self._prepared[2]
