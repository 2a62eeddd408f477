"""Several paced streams on one device: do all of them keep up, and at what latency?

Each stream delivers frames at its own rate, the streams staggered evenly within a frame period. One worker takes
every frame that has arrived (oldest first, up to the engine's static batch), labels them and encodes their overlays; a frame's
latency runs from its arrival to its message. Nothing is dropped, so falling behind shows as growing latency.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from benchmarks.frames import FrameSet
from pipeline.publish.encode import encode_prediction
from pipeline.segment.segmenter import BoneSegmenter
from pipeline.stats import summarize


@dataclass(frozen=True)
class StreamLoad:
    streams: int
    fps: float
    seconds: float


def paced_streams(segmenter: BoneSegmenter, frames: FrameSet, load: StreamLoad) -> dict[str, Any]:
    period = 1.0 / load.fps
    per_stream = max(1, int(load.seconds * load.fps))
    start = time.perf_counter() + 0.05
    arrivals = deque(sorted(start + s * period / load.streams + k * period for s in range(load.streams) for k in range(per_stream)))
    pending: deque[float] = deque()
    latencies: list[float] = []
    batch = segmenter.batch
    index = 0
    while arrivals or pending:
        now = time.perf_counter()
        while arrivals and arrivals[0] <= now:
            pending.append(arrivals.popleft())
        if not pending:
            time.sleep(max(0.0, arrivals[0] - now))
            continue
        taken = [pending.popleft() for _ in range(min(batch, len(pending)))]
        images = [frames.images[(index + i) % len(frames.images)] for i in range(len(taken))]
        index += len(taken)
        for prediction in segmenter.predict(images, overlay=True, tensors=segmenter.device.type == "cuda"):
            encode_prediction(prediction, jpeg=True, raw_overlay=False)
        done = time.perf_counter()
        latencies += [(done - arrived) * 1e3 for arrived in taken]
    stats = summarize(latencies)
    return {
        "streams": load.streams,
        "fps": load.fps,
        "seconds": load.seconds,
        "frames": len(latencies),
        "latency_ms": stats,
        "budget_ms": 1e3 / load.fps,
        "met": stats["p99"] <= 1e3 / load.fps,
    }
