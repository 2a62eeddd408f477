"""Run benchmark configurations side by side on the same frames, timing every stage of every batch.

Stages follow a frame from memory to a published message: preprocess (crop, resize, normalise), host-to-device,
model + labelling, device-to-host (the backend's own timings: CUDA events on the GPU), publish (patch mask to frame
resolution and the message serialised); end to end spans them all. Decode is timed separately, as Holoscan does.
Configurations take turns (``turn`` batches each) so that load from other processes falls on all of them alike.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

from benchmarks.frames import FrameSet
from pipeline.infer.backend import Backend
from pipeline.infer.staging import STAGES
from pipeline.segment.segmenter import BoneSegmenter, Prediction

STAGE_ORDER = ("preprocess", *STAGES, "publish", "end_to_end")


@dataclass(frozen=True)
class Config:
    backend: str
    precision: str
    batch: int

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} b{self.batch}"


def memory_in_use_mb(device: str) -> float:
    """Device memory in use (GPU, all allocators: TensorRT and ONNX Runtime bypass torch's) or process RSS (CPU)."""
    if torch.device(device).type == "cuda":
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return (total - free) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def publish(prediction: Prediction, name: str) -> list[bytes]:
    """The message a publisher would send: topic, JSON header, frame-resolution mask (no socket: transport is not
    what is measured here)."""
    header = {"frame": name, "foreground": prediction.foreground_fraction, "confidence": prediction.confidence}
    return [b"mask", json.dumps(header).encode(), prediction.mask.tobytes()]


@dataclass
class Run:
    """One configuration: its segmenter, its build cost and what it measured, batch by batch."""

    config: Config
    segmenter: BoneSegmenter
    build_s: float
    memory_mb: float  # memory in use after build and warm-up minus before build
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGE_ORDER})
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame index -> patch mask, for label agreement
    loadavg: list[float] = field(default_factory=list)  # 1-minute load average after each turn (includes this run)
    others_cores: list[float] = field(default_factory=list)  # CPU used by other processes during each turn, in cores
    cursor: int = 0  # next frame index (cycles over the frame set)

    @property
    def backend(self) -> Backend:
        return self.segmenter.backend

    def step(self, frames: FrameSet) -> None:
        """One batch through every stage."""
        n = self.config.batch
        indices = [(self.cursor + i) % len(frames.images) for i in range(n)]
        self.cursor += n
        images = [frames.images[i] for i in indices]
        names = [frames.names[i] for i in indices]
        t0 = time.perf_counter()
        batch = self.segmenter.prepare(images, names)
        t1 = time.perf_counter()
        masks, margins = self.backend(batch)
        t2 = time.perf_counter()
        for name, mask, margin in zip(names, masks, margins):
            publish(self.segmenter.finish(mask, margin), name)
        t3 = time.perf_counter()
        timings = self.backend.last_timings_ms
        for stage, ms in (("preprocess", t1 - t0), ("publish", t3 - t2), ("end_to_end", t3 - t0)):
            self.stages[stage].append(ms * 1e3)
        for stage in STAGES:
            self.stages[stage].append(timings[stage])
        for i, mask in zip(indices, masks):
            self.masks.setdefault(i, mask)


def warm_up(segmenter: BoneSegmenter, frames: FrameSet, batch: int, count: int) -> None:
    """``count`` untimed batches: first-call work (compilation, CUDA-graph capture, allocator growth) is not latency."""
    images = [frames.images[i % len(frames.images)] for i in range(batch)]
    data = segmenter.prepare(images)
    for _ in range(count):
        segmenter.backend(data)


class OtherLoad:
    """CPU time other processes took since the last reading, in cores: the load average counts the benchmark
    itself, this does not (other engineers' jobs share the machine)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.last = self._read()

    def _read(self) -> tuple[float, float, float]:
        t = psutil.cpu_times()
        mine = self.me.cpu_times()
        return time.perf_counter(), sum(t) - t.idle - getattr(t, "iowait", 0.0), mine.user + mine.system

    def cores(self) -> float:
        now = self._read()
        (t0, busy0, mine0), self.last = self.last, now
        return max(0.0, (now[1] - busy0) - (now[2] - mine0)) / max(now[0] - t0, 1e-9)


def take_turns(runs: list[Run], frames: FrameSet, count: int, turn: int) -> None:
    """Every run labels ``count`` frames (in whole batches), ``turn`` frames at a time, in rotation."""
    others = OtherLoad()
    goal = 0
    while goal < count:
        goal = min(count, goal + turn)
        for run in runs:
            others.cores()
            while run.cursor < goal:
                run.step(frames)
            run.others_cores.append(others.cores())
            run.loadavg.append(os.getloadavg()[0])
