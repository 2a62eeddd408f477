"""Many probes on one engine: N live streams x fps through ``bonestream run``'s own pipeline, per-stream latency.

    python -m benchmarks.multistream --streams 1,2,4 --fps 5 --input-size 64x80        # CPU-sized (the defaults)
    python -m benchmarks.multistream --device cuda --streams 1,8,16,32 --fps 30        # the issue's GPU target

Each stream plays the shared sweep clip's frames (the phantom without it) as a live device at ``fps``, the streams
staggered evenly within a frame period; one ``Pipeline`` runs them all (one batching stage, engines at static
batches 1, 2, 4, ... up to the number of streams, ``--max-batch-delay``), each stream publishing on its own topic
through one real ZeroMQ port to a subscriber draining it. Per stream: end-to-end latency (capture -> published)
p50/p99, frames published and dropped; per run: total frames/s and the engine calls by size. Writes
``multistream.json``, ``.md`` and ``.png`` to ``--out`` (default: the current folder) and prints the table.
With random weights (the default; nothing else is needed for latency) every output says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench import BenchSettings, calibrated_reference  # noqa: E402
from benchmarks.frames import FrameSet, default_clip, load_frames  # noqa: E402
from benchmarks.report import describe_device, device_info  # noqa: E402
from benchmarks.runner import Wire  # noqa: E402
from benchmarks.targets import check_multistream_targets  # noqa: E402
from models.errors import BonestreamError  # noqa: E402
from models.loader import load_model  # noqa: E402
from pipeline.capture.frame import Frame, Source  # noqa: E402
from pipeline.capture.live import LiveReplay  # noqa: E402
from pipeline.choices import default_precision  # noqa: E402
from pipeline.commands.numbers import BATCH_DELAY_MS, FPS, POSITIVE, POSITIVE_INT, input_size, listed  # noqa: E402
from pipeline.infer.select import BackendSpec  # noqa: E402
from pipeline.latency import STAGES, latency_report  # noqa: E402
from pipeline.memory import check_inference  # noqa: E402
from pipeline.publish.files import write_bytes_atomic, write_figure, write_json_atomic  # noqa: E402
from pipeline.publish.outputs import MessageFactory, ZmqOutput  # noqa: E402
from pipeline.publish.publisher import SharedSender  # noqa: E402
from pipeline.run import Pipeline, RunConfig, Stream  # noqa: E402
from pipeline.segment.batches import StaticBatches, build_static_batches  # noqa: E402

END_TO_END = next(name for name in STAGES if name.startswith("end to end"))
RANDOM_NOTE = "RANDOM WEIGHTS: latency and throughput only; the labels say nothing about bone"


@dataclass(frozen=True)
class MultistreamSettings:
    """One benchmark run; the defaults are the CPU's (``for_device`` gives the GPU's)."""

    device: str = "cpu"
    streams: tuple[int, ...] = (1, 2, 4)
    fps: float = 5.0
    seconds: float = 12.0  # per stream count
    input_size: tuple[int, int] = (64, 80)
    backend: str = "torch"
    precision: str = "fp32"
    max_batch_delay_ms: float = 2.0
    weights: str = "random:0"
    frames: int = 40  # distinct clip frames, cycled

    @classmethod
    def for_device(cls, device: str) -> "MultistreamSettings":
        if torch.device(device).type == "cpu":
            return cls(device=device)
        return cls(device=device, streams=(1, 8, 16, 32), fps=30.0, seconds=20.0, input_size=(224, 224), precision=default_precision(device))


class ClipStream(Source):
    """The clip's frames as one probe: ``count`` frames at ``fps`` (cycling the clip), the first after ``offset`` s."""

    live = False

    def __init__(self, frames: FrameSet, fps: float, count: int, offset: float, name: str) -> None:
        self.frames, self.fps, self.n_frames, self.offset = frames, fps, count, offset
        self.name = self.stem = name

    def __iter__(self) -> Iterator[Frame]:
        time.sleep(self.offset)
        n = len(self.frames.images)
        for i in range(self.n_frames):
            yield Frame(i, self.frames.images[i % n], f"{self.name}_{i:06d}", i / self.fps, time.monotonic_ns())


def run_streams(engines: StaticBatches, frames: FrameSet, s: MultistreamSettings, n: int) -> dict[str, Any]:
    """``n`` live streams at ``s.fps`` for ``s.seconds``: per-stream latency and drops, total throughput."""
    count = max(1, int(s.seconds * s.fps))
    wire = Wire()
    publisher = SharedSender(wire.publisher, n)
    config = RunConfig(live=True, batch_size=engines.largest, max_batch_delay_ms=s.max_batch_delay_ms)
    ids = [f"probe{i}" for i in range(n)]
    streams = [
        Stream(LiveReplay(ClipStream(frames, s.fps, count, i / (s.fps * n), sid)), engines, [ZmqOutput(publisher)], config,
               make_message=MessageFactory(engines.first, sid))
        for i, sid in enumerate(ids)
    ]
    pipeline = Pipeline.of_streams(streams, config)
    started = time.monotonic()
    pipeline.run()
    wall = time.monotonic() - started
    wire.close()
    per_stream = []
    for sid, summary in zip(ids, pipeline.summaries):
        e2e = latency_report(summary.latency)["stages"][END_TO_END]
        per_stream.append({"id": sid, "offered": count, "published": summary.published, "dropped": sum(summary.dropped.values()),
                           "failed": len(summary.failed), "p50_ms": e2e.get("p50"), "p99_ms": e2e.get("p99"), "measured": e2e.get("count", 0)})
    published = sum(p["published"] for p in per_stream)
    p99s = [p["p99_ms"] for p in per_stream if p["p99_ms"] is not None]
    return {
        "streams": n, "fps": s.fps, "seconds": s.seconds, "budget_ms": 1e3 / s.fps, "per_stream": per_stream,
        "worst_p99_ms": max(p99s) if p99s else None, "median_p50_ms": float(np.median([p["p50_ms"] for p in per_stream if p["p50_ms"] is not None])) if p99s else None,
        "total_fps": published / wall, "offered_fps": n * s.fps, "dropped": sum(p["dropped"] for p in per_stream),
        "engine_calls": {str(k): v for k, v in sorted(pipeline.batches.items())}, "subscriber": wire.counters(), "wall_s": wall,
    }


def benchmark(s: MultistreamSettings, progress: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Every stream count in turn; ``out/multistream.json`` is rewritten after each row (``partial`` until the last),
    and a row that fails is reported in ``skipped`` while the others run."""
    frames = load_frames(s.frames, default_clip())
    model, identity = load_model(s.weights, progress=False)
    ref = calibrated_reference(replace(BenchSettings.for_device(s.device), input_size=s.input_size), frames, model, identity)  # its resampling: the device default
    engines = build_static_batches(model, identity, ref, BackendSpec(s.backend, s.device, s.precision, max(s.streams)))
    info = device_info(s.device)
    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "benchmark": "multistream", "settings": asdict(s), "rows": rows, "skipped": [], "partial": True,
        "meta": {
            "device": info, "device_description": describe_device(info), "frames_source": frames.source,
            "frame_size": list(frames.images[0].shape[:2]), "static_batches": list(engines.sizes),
            "backend": {"name": engines.first.backend.name, "precision": engines.first.backend.precision},
            "weights": identity.to_dict(), "random_weights": identity.is_random, "recorded_at_unix": time.time(),
        },
    }
    for n in s.streams:
        try:
            rows.append(run_streams(engines, frames, s, n))
        except Exception as exc:  # one failing row must not lose the others
            doc["skipped"].append({"streams": n, "reason": f"{type(exc).__name__}: {exc}"})
            print(f"skipped {n} streams: {doc['skipped'][-1]['reason']}", flush=True)
        else:
            if progress:
                print(row_line(rows[-1]), flush=True)
        if out is not None:
            write_json_atomic(out / "multistream.json", doc)
    doc["partial"] = False
    if identity.is_random:
        doc["note"] = RANDOM_NOTE
    doc["targets"] = check_multistream_targets(doc)
    return doc


def row_line(r: dict[str, Any]) -> str:
    worst = "-" if r["worst_p99_ms"] is None else f"{r['worst_p99_ms']:.1f}"
    return (f"{r['streams']:>3} x {r['fps']:g} fps: p50 {r['median_p50_ms'] or 0:.1f} ms (median stream), worst p99 {worst} ms, "
            f"total {r['total_fps']:.1f} of {r['offered_fps']:g} fps, dropped {r['dropped']}, engine calls {r['engine_calls']}")


def markdown(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    lines = [f"# Many probes, one engine ({m['device_description']})", ""]
    if doc.get("note"):
        lines += [f"**{doc['note']}**", ""]
    lines += [f"{m['frames_source']} frames ({m['frame_size'][0]}x{m['frame_size'][1]}) at input {doc['settings']['input_size'][0]}x"
              f"{doc['settings']['input_size'][1]}, {m['backend']['name']} {m['backend']['precision']}, static batches "
              f"{', '.join(map(str, m['static_batches']))}, max batch delay {doc['settings']['max_batch_delay_ms']:g} ms; live streams, "
              "latency from capture to published (per stream, first/last 10 frames skipped).", ""]
    lines += ["| streams x fps | stream | p50 ms | p99 ms | published | dropped |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        for p in r["per_stream"]:
            cells = ["-" if p[k] is None else f"{p[k]:.1f}" for k in ("p50_ms", "p99_ms")]
            lines.append(f"| {r['streams']} x {r['fps']:g} | {p['id']} | {cells[0]} | {cells[1]} | {p['published']}/{p['offered']} | {p['dropped']} |")
    lines += ["", "| streams x fps | total fps (offered) | worst p99 ms | engine calls (frames: count) |", "|---|---|---|---|"]
    for r in doc["rows"]:
        worst = "-" if r["worst_p99_ms"] is None else f"{r['worst_p99_ms']:.1f}"
        lines.append(f"| {r['streams']} x {r['fps']:g} | {r['total_fps']:.1f} ({r['offered_fps']:g}) | {worst} | {r['engine_calls']} |")
    lines += ["", "| target | wanted | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['wanted']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in doc["targets"]]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Per-stream p50 and p99 against the number of streams, the frame budget, and total frames/s."""
    rows = doc["rows"]
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        for key, marker in (("p50_ms", "o"), ("p99_ms", "^")):
            values = [p[key] for p in r["per_stream"] if p[key] is not None]
            ax.scatter([r["streams"]] * len(values), values, marker=marker, color="C0" if key == "p50_ms" else "C3", s=18)
    ax.axhline(rows[0]["budget_ms"], color="gray", ls="--", lw=1)
    ax.scatter([], [], marker="o", color="C0", label="per-stream p50")
    ax.scatter([], [], marker="^", color="C3", label="per-stream p99")
    ax.plot([], [], color="gray", ls="--", label="frame period")
    ax.set_xlabel("streams")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    n = [r["streams"] for r in rows]
    tx.plot(n, [r["total_fps"] for r in rows], marker="o", label="published")
    tx.plot(n, [r["offered_fps"] for r in rows], ls="--", color="gray", label="offered")
    tx.set_xlabel("streams")
    tx.set_ylabel("total frames / s")
    tx.legend(fontsize=8)
    ax.set_title(f"{doc['meta']['device_description']}, {rows[0]['fps']:g} fps per stream", fontsize=8)
    tx.set_title(f"engines {', '.join(map(str, doc['meta']['static_batches']))}, max batch delay {doc['settings']['max_batch_delay_ms']:g} ms", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the stamp
    write_figure(fig, path, RANDOM_NOTE if doc["meta"]["random_weights"] else None)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--streams", type=listed(POSITIVE_INT), default=None, help="stream counts to run (default cpu 1,2,4; cuda 1,8,16,32)")
    p.add_argument("--fps", type=FPS, default=None, help="frames per second of each stream (default cpu 5, cuda 30)")
    p.add_argument("--seconds", type=POSITIVE, default=None, help="per stream count (default cpu 12, cuda 20)")
    p.add_argument("--input-size", type=input_size, default=None, help="model input HxW (default cpu 64x80, cuda 224x224)")
    p.add_argument("--backend", default=None, help="engine backend (default torch)")
    p.add_argument("--precision", default=None, help="ViT precision (default cpu fp32, cuda bf16; not gated: latency only)")
    p.add_argument("--max-batch-delay", type=BATCH_DELAY_MS, default=None, metavar="MS", help="batching deadline (default 2 ms)")
    p.add_argument("--weights", default=None, help="weights (default random:0: latency needs no trained weights)")
    p.add_argument("--out", type=Path, default=Path("."), help="results folder (default: the current folder)")
    args = p.parse_args(argv)
    s = MultistreamSettings.for_device(args.device)
    given = {"streams": args.streams and tuple(args.streams), "fps": args.fps, "seconds": args.seconds, "input_size": args.input_size,
             "backend": args.backend, "precision": args.precision, "max_batch_delay_ms": args.max_batch_delay, "weights": args.weights}
    s = replace(s, **{k: v for k, v in given.items() if v is not None})
    try:  # engines up to one frame per stream, checked before the model loads
        check_inference(s.device, max(s.streams), s.input_size, 8, "--streams")
    except BonestreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"multistream: {', '.join(map(str, s.streams))} streams x {s.fps:g} fps, {s.seconds:g} s each, input {s.input_size[0]}x{s.input_size[1]} on {s.device}"
          + (f" ({clip.name})" if (clip := default_clip()) else " (phantom)"), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = benchmark(s, out=args.out)
    write_json_atomic(args.out / "multistream.json", doc)
    write_bytes_atomic(args.out / "multistream.md", markdown(doc).encode())
    plot(doc, args.out / "multistream.png")
    print(markdown(doc))
    print(f"wrote {args.out / 'multistream.json'}, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
