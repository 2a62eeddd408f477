"""Run benchmark configurations side by side on the same frames, timing every stage of every batch.

Stages follow a frame from memory to a message received by a subscriber, through the product's own code: prepare
(the host's uint8 plane), host-to-device, model + labelling, mask + overlay, device-to-host (``BoneSegmenter.predict``;
CUDA events on the GPU), encode (overlay JPEG once, mask to the host, the message: ``encode_predictions`` and
``MessageFactory``) and publish (sent on a real ZeroMQ PUB socket on loopback, with a subscriber draining it);
end to end spans them all. Decode is timed separately, as Holoscan does. Configurations take turns (``turn``
frames each) so that load from other processes falls on all of them alike.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import psutil
import torch
import zmq

from benchmarks.frames import FrameSet
from pipeline.capture.frame import Frame
from pipeline.publish.encode import encode_predictions, warm_encoder
from pipeline.publish.message import MessageError, decode_header
from pipeline.publish.outputs import MessageFactory
from pipeline.publish.publisher import Publisher
from pipeline.publish.subscriber import Subscriber
from pipeline.run import Result
from pipeline.segment.segmenter import STAGES as FRAME_STAGES
from pipeline.segment.segmenter import BoneSegmenter

STAGE_ORDER = ("prepare", *FRAME_STAGES, "encode", "publish", "end_to_end")
HOST_STAGES = tuple(s for s in STAGE_ORDER if s not in ("model_labelling", "end_to_end"))  # all but the model


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


class Wire:
    """A real publisher on a loopback port and one subscriber draining it on a thread: the publish stage sends
    what ``bonestream run`` sends, to someone who reads it. The subscriber validates every message's header and
    parts (``decode_header``: schema, sizes, the JPEG's frame header) but decodes no pixels: a viewer does that in
    its own process, and here it would take the benchmark's cores."""

    def __init__(self) -> None:
        self.publisher = Publisher("tcp://127.0.0.1:*", sndhwm=64)
        address = self.publisher.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.subscriber = Subscriber(address, rcvhwm=64)
        self.received = self.malformed = 0
        self._stop = threading.Event()
        if not self.publisher.wait_for_subscribers(1, timeout=10):
            raise RuntimeError(f"benchmark subscriber did not connect to {address}")
        self._thread = threading.Thread(target=self._drain, name="bench-subscriber", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        socket = self.subscriber.socket
        while not self._stop.is_set():
            if not socket.poll(200):
                continue
            try:
                decode_header(socket.recv_multipart(copy=True))
                self.received += 1
            except MessageError:
                self.malformed += 1

    def counters(self) -> dict[str, int]:
        return {"sent": self.publisher.sent, "received": self.received, "malformed": self.malformed}

    def close(self) -> None:
        deadline = time.monotonic() + 5
        while self.received + self.malformed < self.publisher.sent and time.monotonic() < deadline:
            time.sleep(0.05)  # let the subscriber take what is in flight
        self._stop.set()
        self._thread.join(timeout=5)
        self.subscriber.close()
        self.publisher.close()


def publish_batch(segmenter: BoneSegmenter, frames: list[Frame], wire: Wire, make: MessageFactory, *, overlay: bool) -> tuple[list[np.ndarray], dict[str, float]]:
    """One batch through every stage the pipeline runs: per-stage ms of the batch, and the patch masks."""
    t0 = time.perf_counter()
    predictions = segmenter.predict([f.image for f in frames], [f.name for f in frames], overlay=overlay, tensors=segmenter.device.type == "cuda")
    t1 = time.perf_counter()
    inferred = time.monotonic_ns()
    results = []
    jpegs = encode_predictions(predictions, jpeg=overlay, raw_overlay=False)  # the batch's overlays in one call
    for frame, prediction, jpeg in zip(frames, predictions, jpegs):
        result = Result(frame, prediction, stamps={"captured": frame.capture_ns, "inferred": inferred})
        result.overlay_jpeg = jpeg
        result.stamps["labelled"] = time.monotonic_ns()
        result.message = make(result)
        results.append(result)
    t2 = time.perf_counter()
    for result in results:
        wire.publisher.send(result.message)
    t3 = time.perf_counter()
    stages = {stage: sum(p.timings_ms[stage] for p in predictions) for stage in ("prepare", *FRAME_STAGES)}
    stages.update(encode=(t2 - t1) * 1e3, publish=(t3 - t2) * 1e3, end_to_end=(t3 - t0) * 1e3)
    return [np.asarray(p.patch_mask) for p in predictions], stages


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
    wall_s: float = 0.0  # wall time of its turns (batches back to back): throughput is frames / this

    @property
    def backend(self):
        return self.segmenter.backend

    def step(self, frames: FrameSet, wire: Wire, make: MessageFactory, overlay: bool = True) -> None:
        """One batch through every stage."""
        n = self.config.batch
        indices = [(self.cursor + i) % len(frames.images) for i in range(n)]
        self.cursor += n
        batch = [Frame(i, frames.images[i], frames.names[i], None, time.monotonic_ns()) for i in indices]
        masks, stages = publish_batch(self.segmenter, batch, wire, make, overlay=overlay)
        for stage, ms in stages.items():
            self.stages[stage].append(ms)
        for i, mask in zip(indices, masks):
            self.masks.setdefault(i, mask)


def warm_up(segmenter: BoneSegmenter, frames: FrameSet, batch: int, count: int) -> None:
    """``count`` untimed batches (allocator growth, caches) after the build's own warm-up and capture."""
    images = [frames.images[i % len(frames.images)] for i in range(batch)]
    warm_encoder(segmenter.device, segmenter.geometry.frame_size)
    for _ in range(count):
        segmenter.predict(images, overlay=True)


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


def take_turns(
    runs: list[Run], frames: FrameSet, count: int, turn: int, wire: Wire, make: MessageFactory,
    failed: Callable[[Run, Exception], None], after_turn: Callable[[], None],
) -> None:
    """Every run labels ``count`` frames (in whole batches), ``turn`` frames at a time, in rotation. A run that raises
    is taken out of ``runs`` and handed to ``failed``; the others go on. ``after_turn`` runs after every round (the
    benchmark writes what it has so far)."""
    others = OtherLoad()
    goal = 0
    while goal < count and runs:
        goal = min(count, goal + turn)
        for run in list(runs):
            others.cores()
            start = time.perf_counter()
            try:
                while run.cursor < goal:
                    run.step(frames, wire, make)
            except Exception as exc:  # one configuration failing on a frame must not lose every other one's numbers
                runs.remove(run)
                failed(run, exc)
                continue
            finally:
                run.wall_s += time.perf_counter() - start
            run.others_cores.append(others.cores())
            run.loadavg.append(os.getloadavg()[0])
        after_turn()
