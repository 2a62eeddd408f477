"""Static device buffers between host frames and an engine, with per-stage timings.

Every engine here has a static shape, so its uint8 input buffer (and, on CUDA, a pinned host mirror and pinned
output mirrors) is allocated once and reused: no per-frame allocation, and CUDA-graph capture and io-binding can
point at fixed addresses. Stage times come from CUDA events on the GPU (host clocks would only measure kernel
launches) and from the host clock on the CPU. All work runs under the device's guard and, on CUDA, on the staging's
own stream (``Staging.active``): never on the legacy default stream, which would serialise with every other
stream's work, and the stream ONNX Runtime is handed for its kernels.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from models.placement import device_guard

# An engine's compute step: its static device input -> device outputs (mask, margin), or (keys,). Outputs may be
# static buffers, overwritten by the next call.
Compute = Callable[[torch.Tensor], Sequence[torch.Tensor]]

STAGES = ("host_to_device", "model_labelling", "device_to_host")
CUDA_GRAPH_WARMUP = 3  # eager runs on a side stream before capture, as torch.cuda.graphs asks


class StageClock:
    """Marks between stages: CUDA events on the device's current stream, or the host clock on the CPU."""

    def __init__(self, device: torch.device, names: Sequence[str]) -> None:
        self.cuda = device.type == "cuda"
        self.names = tuple(names)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(len(names) + 1)] if self.cuda else []
        self.times = [0.0] * (len(names) + 1)

    def mark(self, index: int) -> None:
        if self.cuda:
            self.events[index].record()
        else:
            self.times[index] = time.perf_counter()

    def elapsed_ms(self) -> dict[str, float]:
        """Stage durations of the last pass (on CUDA this waits for the last mark)."""
        if self.cuda:
            self.events[-1].synchronize()
            return {name: self.events[i].elapsed_time(self.events[i + 1]) for i, name in enumerate(self.names)}
        return {name: (self.times[i + 1] - self.times[i]) * 1e3 for i, name in enumerate(self.names)}


class HostMirror:
    """Device tensors -> numpy: through pinned buffers on CUDA (one synchronisation per pass), direct on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pinned: dict[int, torch.Tensor] = {}

    def start(self, slot: int, tensor: torch.Tensor) -> torch.Tensor:
        """Begin copying ``tensor`` to the host; the result is valid after the pass's clock has synchronised."""
        if not self.cuda:
            return tensor
        host = self.pinned.get(slot)
        if host is None or host.shape != tensor.shape or host.dtype != tensor.dtype:
            host = self.pinned[slot] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        return host

    @staticmethod
    def numpy(host: torch.Tensor, n: int) -> np.ndarray:
        return host[:n].numpy().copy()  # a copy: the mirror (or a static output) is reused by the next pass


class StaticInput:
    """A static uint8 buffer of shape ``batch x ...`` on ``device`` and, on CUDA, its pinned host mirror: filled row
    by row and never reallocated, so captured graphs and io-bindings can point at it."""

    def __init__(self, device: torch.device, shape: tuple[int, ...]) -> None:
        self.device = device
        self.shape = tuple(shape)
        self.tensor = torch.zeros(self.shape, dtype=torch.uint8, device=device)
        self.host = torch.zeros(self.shape, dtype=torch.uint8, pin_memory=True) if device.type == "cuda" else None

    def upload(self, data: np.ndarray | torch.Tensor) -> int:
        """Copy ``data`` (numpy on the host, or a tensor already on the device) into the first rows; rows past them
        keep old data (padding, ignored). Returns the number of rows."""
        n = data.shape[0]
        if not 0 < n <= self.shape[0] or tuple(data.shape[1:]) != self.shape[1:]:
            raise ValueError(f"batch {tuple(data.shape)} does not fit the engine's static input {self.shape}")
        if isinstance(data, torch.Tensor) and data.device == self.device:
            self.tensor[:n].copy_(data)
        elif self.host is not None:
            self.host[:n].copy_(torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)))
            self.tensor[:n].copy_(self.host[:n], non_blocking=True)
        else:
            self.tensor[:n].copy_(torch.as_tensor(data))
        return n


class Staging:
    """One static uint8 input of shape ``batch x plane`` on ``device``; runs ``compute`` on up to ``batch`` frames."""

    def __init__(self, device: str | torch.device, shape: tuple[int, ...]) -> None:
        with device_guard(device) as dev:
            self.device = dev
            self.cuda = dev.type == "cuda"
            self.buffer = StaticInput(dev, shape)
            self.shape = self.buffer.shape
            self.input = self.buffer.tensor
            self.upload = self.buffer.upload
            self.clock = StageClock(dev, STAGES)
            self.mirror = HostMirror(dev)
            self.stream = torch.cuda.Stream(dev) if self.cuda else None  # a non-default stream, for this engine's work

    @contextmanager
    def active(self) -> Iterator[torch.device]:
        """The device's guard and, on CUDA, this staging's stream as the current one: it first waits for the caller's
        stream (inputs made there), and the caller's stream waits for it on leaving (outputs used there); GPU-side
        waits, no host synchronisation."""
        with device_guard(self.device) as dev:
            if self.stream is None:
                yield dev
                return
            caller = torch.cuda.current_stream(dev)
            self.stream.wait_stream(caller)
            try:
                with torch.cuda.stream(self.stream):
                    yield dev
            finally:
                caller.wait_stream(self.stream)

    def run(self, planes: np.ndarray, compute: Compute) -> tuple[list[np.ndarray], dict[str, float]]:
        """Outputs for ``planes`` (n <= batch rows) in host memory, and the stage times in ms."""
        with self.active():
            clock = self.clock
            clock.mark(0)
            n = self.upload(planes)
            clock.mark(1)
            outputs = compute(self.input)
            clock.mark(2)
            host = [self.mirror.start(i, o) for i, o in enumerate(outputs)]
            clock.mark(3)
            timings = clock.elapsed_ms()
            return [HostMirror.numpy(h, n) for h in host], timings


def capture_cuda_graph(compute: Callable[..., Sequence[torch.Tensor]], *static_inputs: torch.Tensor) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Replay ``compute`` as one CUDA graph on static inputs: a ViT-S forward is ~150 kernels, and at batch 1
    launching them costs about as much as running them. Call under the device's guard; the returned function
    ignores its arguments (the graph reads the static inputs) and returns the static outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(CUDA_GRAPH_WARMUP):
            compute(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another thread's CUDA work (a second stream being built beside a running one) does not break it
    with torch.cuda.graph(graph, capture_error_mode="thread_local"), torch.inference_mode():
        static_outputs = tuple(compute(*static_inputs))

    def replay(*_: torch.Tensor) -> tuple[torch.Tensor, ...]:
        graph.replay()
        return static_outputs

    replay.graph = graph  # type: ignore[attr-defined]  # keeps the graph (and its memory pool) alive with the function
    return replay


def ready(compute: Callable[..., Sequence[torch.Tensor]], *static_inputs: torch.Tensor, capture: bool = True) -> Callable[..., Sequence[torch.Tensor]]:
    """``compute`` made ready before the first frame: on CUDA captured into a graph (torch work only: a foreign
    runtime such as ONNX Runtime launches on its own stream, which a capture would miss, so it passes
    ``capture=False``), otherwise run CUDA_GRAPH_WARMUP times (first-call allocation, torch.compile's compilation),
    so no live frame pays for either."""
    with device_guard(static_inputs[0].device):
        if capture and static_inputs[0].is_cuda:
            return capture_cuda_graph(compute, *static_inputs)
        with torch.inference_mode():
            for _ in range(CUDA_GRAPH_WARMUP if static_inputs[0].is_cuda else 1):
                compute(*static_inputs)
        return compute


class StagedBackend:
    """The Backend protocol on top of a Staging: splits a batch into static-size chunks and sums stage times.

    Subclasses set ``name``, ``device``, ``precision``, ``batch``, and ``staging`` and ``compute``, built and
    made ready in their constructor: an engine never compiles or captures on a live frame.
    """

    name: str
    device: str
    precision: str
    batch: int
    last_timings_ms: dict[str, float]
    staging: Staging
    compute: Compute

    def run(self, planes: np.ndarray) -> list[np.ndarray]:
        """All outputs of the engine (mask and margin, or keys) for any number of uint8 planes, in host memory."""
        parts, totals = [], dict.fromkeys(STAGES, 0.0)
        with torch.inference_mode():
            for start in range(0, planes.shape[0], self.batch):
                outputs, timings = self.staging.run(planes[start : start + self.batch], self.compute)
                parts.append(outputs)
                totals = {k: totals[k] + timings[k] for k in STAGES}
        self.last_timings_ms = totals
        return [np.concatenate(column) for column in zip(*parts)]

    def __call__(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask, margin = self.run(planes)
        return mask, margin
