"""Static device buffers between host frames and an engine, with per-stage timings.

Every engine here has a static shape, so one input buffer (and, on CUDA, pinned host mirrors) is allocated once
and reused: no per-frame allocation, and CUDA-graph capture and io-binding can point at fixed addresses. Stage
times come from CUDA events on the GPU (host clocks would only measure kernel launches) and from the host
clock on the CPU.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

# An engine's compute step: the static device input -> device outputs (mask, margin), or (keys,).
Compute = Callable[[torch.Tensor], Sequence[torch.Tensor]]

STAGES = ("host_to_device", "model_labelling", "device_to_host")


class Staging:
    """One static input of shape ``batch x 3 x H x W`` on ``device``; runs ``compute`` on up to ``batch`` frames."""

    def __init__(self, device: torch.device, shape: tuple[int, ...]) -> None:
        self.device = torch.device(device)
        self.shape = tuple(shape)
        self.input = torch.zeros(self.shape, device=self.device)
        self.cuda = self.device.type == "cuda"
        self.host_input = torch.zeros(self.shape, pin_memory=True) if self.cuda else None
        self.host_outputs: list[torch.Tensor] | None = None
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if self.cuda else []

    def run(self, frames: np.ndarray, compute: Compute) -> tuple[list[np.ndarray], dict[str, float]]:
        """Outputs for ``frames`` (n <= batch rows; the rest of the buffer is padding) and the stage times in ms."""
        n = frames.shape[0]
        if n > self.shape[0] or tuple(frames.shape[1:]) != self.shape[1:]:
            raise ValueError(f"batch {tuple(frames.shape)} does not fit the engine's static input {self.shape}")
        source = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        return self._run_cuda(source, compute) if self.cuda else self._run_host(source, compute)

    def _run_host(self, source: torch.Tensor, compute: Compute) -> tuple[list[np.ndarray], dict[str, float]]:
        n = source.shape[0]
        t0 = time.perf_counter()
        self.input[:n].copy_(source)
        t1 = time.perf_counter()
        outputs = compute(self.input)
        t2 = time.perf_counter()
        host = [o[:n].numpy().copy() for o in outputs]
        t3 = time.perf_counter()
        return host, dict(zip(STAGES, ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)))

    def _run_cuda(self, source: torch.Tensor, compute: Compute) -> tuple[list[np.ndarray], dict[str, float]]:
        n = source.shape[0]
        e0, e1, e2, e3 = self.events
        self.host_input[:n].copy_(source)
        e0.record()
        self.input.copy_(self.host_input, non_blocking=True)
        e1.record()
        outputs = compute(self.input)
        e2.record()
        if self.host_outputs is None:
            self.host_outputs = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outputs]
        for host, device in zip(self.host_outputs, outputs):
            host.copy_(device, non_blocking=True)
        e3.record()
        e3.synchronize()
        timings = dict(zip(STAGES, (e0.elapsed_time(e1), e1.elapsed_time(e2), e2.elapsed_time(e3))))
        return [h[:n].numpy().copy() for h in self.host_outputs], timings


class StagedBackend:
    """The Backend protocol on top of a Staging: splits a batch into static-size chunks and sums stage times.

    Subclasses set ``name``, ``device``, ``precision``, ``batch``, and ``staging`` and ``compute`` for engines
    built ahead of time, or override ``_prepare(shape)`` to build them on first use.
    """

    name: str
    device: str
    precision: str
    batch: int
    last_timings_ms: dict[str, float]
    staging: Staging
    compute: Compute

    def _prepare(self, shape: tuple[int, ...]) -> tuple[Staging, Compute]:
        if shape != self.staging.shape:
            raise ValueError(f"the {self.name} engine was built for input {self.staging.shape}, got {shape}")
        return self.staging, self.compute

    def run(self, frames: np.ndarray) -> list[np.ndarray]:
        """All outputs of the engine (mask and margin, or keys) for any number of frames."""
        staging, compute = self._prepare((self.batch, *frames.shape[1:]))
        parts, totals = [], dict.fromkeys(STAGES, 0.0)
        with torch.inference_mode():
            for start in range(0, frames.shape[0], self.batch):
                outputs, timings = staging.run(frames[start : start + self.batch], compute)
                parts.append(outputs)
                totals = {k: totals[k] + timings[k] for k in STAGES}
        self.last_timings_ms = totals
        return [np.concatenate(column) for column in zip(*parts)]

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask, margin = self.run(frames)
        return mask, margin
