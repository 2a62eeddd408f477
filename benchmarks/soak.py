"""Soak: stream for a long time and watch memory and file descriptors; growth must stay under 5 %.

    python -m benchmarks.soak --minutes 30 --fps 30            # the full run (CPU, tiny model input)
    python -m benchmarks.soak --minutes 0.2 --fps 30           # a quick look

The phantom is replayed in a loop at a fixed rate (a bedside-like stream) through the whole pipeline:
torch backend, labelling, overlay, ZeroMQ publishing to a live subscriber on loopback. RSS and open file
descriptors are sampled every few seconds; growth compares the median of the last tenth of the samples with
the median of the first tenth after warm-up. Weights are random (latency and resource plumbing only).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.report import device_info
from calibration.calibrate import CalibrationSettings, calibrate
from calibration.clustering import KMeansSettings
from models.loader import load_model
from models.preprocess import Geometry
from pipeline.capture.pacing import paced
from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.commands.numbers import FPS, POSITIVE
from pipeline.commands.paths import check_output_dir
from pipeline.infer.backend import TorchBackend
from pipeline.infer.deployment import Deployment
from pipeline.publish.files import write_figure, write_json_atomic
from pipeline.publish.outputs import MessageFactory, ZmqOutput
from pipeline.publish.publisher import Publisher
from pipeline.publish.subscriber import Subscriber
from pipeline.run import Pipeline, RunConfig
from pipeline.segment.render import RANDOM_STAMP
from pipeline.segment.segmenter import BoneSegmenter



@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 1800.0
    fps: float = 30.0
    input_size: tuple[int, int] = (32, 40)
    sample_s: float = 5.0
    warmup_fraction: float = 0.1


def _segmenter(frames: list[np.ndarray], input_size: tuple[int, int]) -> BoneSegmenter:
    model, identity = load_model("random:0", progress=False)
    geometry = Geometry.fit(frames[0].shape, input_size=input_size, resampling="area")
    ref = calibrate(model, identity, geometry, frames, [f"ref{i}" for i in range(len(frames))],
                    CalibrationSettings(kmeans=KMeansSettings(k=4, sample_interval=1)), progress=False)
    return BoneSegmenter(ref, TorchBackend(Deployment.from_reference(model, identity.label, ref)), identity)


def _growth(values: list[float], warmup: int) -> float:
    """Percent change from the first tenth (after warm-up) to the last tenth of the samples (medians)."""
    v = np.asarray(values[warmup:], dtype=np.float64)
    if v.size < 4:
        return 0.0
    tenth = max(1, v.size // 10)
    first, last = np.median(v[:tenth]), np.median(v[-tenth:])
    return float((last - first) / first * 100.0)


def _slope_per_hour(times_s: list[float], values: list[float], warmup: int) -> float:
    """Least-squares trend after warm-up, per hour: a slow leak hides inside a few percent over 30 minutes
    but not in its rate (a bedside run lasts hours)."""
    t, v = np.asarray(times_s[warmup:], dtype=np.float64), np.asarray(values[warmup:], dtype=np.float64)
    if t.size < 4 or np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t / 3600.0, v, 1)[0])


def soak(config: SoakConfig) -> dict[str, Any]:
    phantom = PhantomConfig(height=256, width=320, n_frames=int(config.fps * 10), fps=config.fps)
    base = PhantomSource(phantom)
    seg = _segmenter([base.phantom.frame(i)[0] for i in (0, 100, 200)], config.input_size)
    source = paced(base, config.fps, loop=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    publisher = Publisher(address)
    subscriber = Subscriber(address)
    publisher.wait_for_subscribers(1, timeout=10)
    pipeline = Pipeline(source, seg, [ZmqOutput(publisher)], RunConfig(live=False, make_message=MessageFactory(seg, "soak")))
    received = [0]
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            if subscriber.recv(timeout=0.5) is not None:
                received[0] += 1

    threads = [threading.Thread(target=pipeline.run, daemon=True), threading.Thread(target=consume, daemon=True)]
    proc = psutil.Process()
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        while (elapsed := time.monotonic() - started) < config.seconds:
            samples.append({"t_s": elapsed, "rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(),
                            "threads": proc.num_threads(), "published": pipeline.summary.published, "received": received[0]})
            time.sleep(min(config.sample_s, max(0.0, config.seconds - elapsed)))
    finally:
        pipeline.stop()
        threads[0].join(timeout=30)
        done.set()
        threads[1].join(timeout=5)
        subscriber.close()
    warmup = int(len(samples) * config.warmup_fraction)
    summary = pipeline.summary
    return {
        "benchmark": "soak",
        "machine": device_info("cpu"),
        "config": {"seconds": config.seconds, "fps": config.fps, "input_size": list(config.input_size), "sample_s": config.sample_s},
        "weights": seg.weights.label,
        "random_weights": seg.weights.is_random,
        "note": seg.weights.warning,
        "frames": {"read": summary.read, "published": summary.published, "received_by_subscriber": received[0], "failed": len(summary.failed)},
        "rss_growth_pct": _growth([s["rss_mb"] for s in samples], warmup),
        "fd_growth_pct": _growth([s["fds"] for s in samples], warmup),
        "rss_slope_mb_per_hour": _slope_per_hour([s["t_s"] for s in samples], [s["rss_mb"] for s in samples], warmup),
        "rss_mb": {"first": samples[0]["rss_mb"], "max": max(s["rss_mb"] for s in samples), "last": samples[-1]["rss_mb"]},
        "fds": {"first": samples[0]["fds"], "max": max(s["fds"] for s in samples), "last": samples[-1]["fds"]},
        "samples": samples,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in result["samples"]]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 5), dpi=110, sharex=True)
    a.plot(t, [s["rss_mb"] for s in result["samples"]])
    a.set_ylabel("RSS (MiB)")
    b.plot(t, [s["fds"] for s in result["samples"]], color="tab:orange")
    b.set_ylabel("open fds")
    b.set_xlabel("minutes")
    fig.suptitle(f"soak: {result['frames']['published']} frames at {result['config']['fps']} fps, RSS growth {result['rss_growth_pct']:+.2f} % ({result['rss_slope_mb_per_hour']:+.1f} MiB/h), fds {result['fd_growth_pct']:+.2f} %", fontsize=9, y=0.955)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # the top strip is the stamp's
    write_figure(fig, path, RANDOM_STAMP if result["random_weights"] else None)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=POSITIVE, default=30.0)
    p.add_argument("--fps", type=FPS, default=30.0)
    p.add_argument("--sample-s", type=POSITIVE, default=5.0)
    p.add_argument("--out", type=Path, default=Path("."), help="results folder (default: the current folder)")
    args = p.parse_args(argv)
    check_output_dir(args.out, "--out")
    result = soak(SoakConfig(seconds=args.minutes * 60, fps=args.fps, sample_s=args.sample_s))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "soak.json", result)
    plot(result, args.out / "soak.png")
    f = result["frames"]
    print(f"soak {args.minutes:g} min at {args.fps:g} fps ({result['weights']}): read {f['read']}, published {f['published']}, "
          f"subscriber received {f['received_by_subscriber']}, failed {f['failed']}")
    print(f"RSS {result['rss_mb']['first']:.1f} -> {result['rss_mb']['last']:.1f} MiB (growth {result['rss_growth_pct']:+.2f} %, trend {result['rss_slope_mb_per_hour']:+.1f} MiB/h), "
          f"fds {result['fds']['first']} -> {result['fds']['last']} (growth {result['fd_growth_pct']:+.2f} %)")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0 if abs(result["rss_growth_pct"]) < 5 and abs(result["fd_growth_pct"]) < 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
