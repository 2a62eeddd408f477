"""The engine alone, across modes x precisions x batch sizes: model + labelling latency, saturated frames/s, labels
against fp32, and the overlay's JPEG encode (nvJPEG on CUDA), one JSON line per row as it goes.

    python -m benchmarks.engine_grid [--device cuda] [--precisions fp32,tf32,bf16,fp16] [--batch-sizes 1,8,32,64] ...

Engines come from the product's own constructor (``make_backend``): torch eager, and torch-compile, each captured
into a CUDA graph on CUDA (the torch backend does that when built). ``tf32`` is the fp32 engine built and run with
TF32 matrix products allowed; every other row runs with them off. Per row: latency of the model + labelling stage
(CUDA events on a GPU, the host clock on the CPU) and of the whole engine call (upload + model + download) over up
to ``--calls`` calls on real frames after warm-up, p50/p99/p99.9; frames/s of a back-to-back loop of the model
stage (batch x calls / wall time); the share of patch labels equal to the fp32 eager engine's on the same frames.
A row that fails (out of memory, a compile error) is written with its error and the grid goes on. Writes
``<tag>.jsonl`` as it goes, then ``<tag>.json``, ``<tag>.md`` and ``<tag>.png`` in ``--out`` (default: the current
folder); with random weights (the default) every output says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, ContextManager

import cv2
import numpy as np
import torch

from benchmarks.bench import Bench, BenchSettings, prepare
from benchmarks.report import describe_device, device_info, device_slug
from models.placement import fp32_matmul
from pipeline.choices import SDPA_BACKENDS
from pipeline.commands.numbers import COUNT, POSITIVE, POSITIVE_INT, input_size, listed
from pipeline.infer.cache import library_versions
from pipeline.infer.select import BackendSpec, make_backend
from pipeline.publish.encode import DEFAULT_JPEG_QUALITY, encode_jpeg
from pipeline.publish.files import write_bytes_atomic, write_figure, write_json_atomic
from pipeline.stats import summarize

MODES = {"eager": "torch", "compile": "torch-compile"}
NEEDS_S = {"eager": 10.0, "compile": 75.0}  # time a row may take at most (compiling takes about a minute), for --budget-s
STARTED = time.monotonic()
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # tf32: the fp32 engine with TF32 matrix products


@dataclass(frozen=True)
class GridSettings:
    """One grid; the defaults are a CPU-sized run, ``for_device("cuda")`` the GPU's (about 4 minutes on an H100,
    estimated: nothing has run on a GPU yet)."""

    device: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "bf16")
    batches: tuple[int, ...] = (1, 2)
    compile_precisions: tuple[str, ...] = ()  # torch-compile rows (about a minute to compile each), after the rest
    compile_batches: tuple[int, ...] = ()
    sdpa_kernels: tuple[str, ...] = ()  # attention kernels forced one by one (bf16, batch 1), after the eager rows
    calls: int = 20  # timed calls per row at most ...
    row_seconds: float = 2.0  # ... and no more than this long per loop once 20 calls are in
    warmup: int = 2  # calls per row before timing
    jpeg: bool = True
    input_size: tuple[int, int] | None = (224, 224)  # None: the clip's own geometry
    frames: int = 64  # real frames decoded from the clip (cycled to fill a batch)
    weights: str = "random:0"
    clip: Path | None = None  # None: the shared sweep clip if it is beside the repository, else the phantom
    out: Path = Path(".")
    tag: str = "engine_grid"
    budget_s: float | None = None  # from the start: rows that would not fit are written as skipped, the tables still are

    @classmethod
    def for_device(cls, device: str) -> "GridSettings":
        if torch.device(device).type == "cpu":
            return cls(device=device)
        return cls(device=device, precisions=PRECISIONS, batches=(1, 8, 32, 64), compile_precisions=("bf16", "fp16"),
                   sdpa_kernels=tuple(k for k in SDPA_BACKENDS if k != "auto"),
                   compile_batches=(1,), calls=1000, row_seconds=4.0, warmup=20)


def tf32_matmul(allowed: bool) -> ContextManager[None]:
    """TF32 matrix products on or off for one row (build and timing: a CUDA graph keeps the kernels chosen when it
    is captured), restored after; the engines' own CUDA default (TF32) does not override it."""
    return fp32_matmul("high" if allowed else "highest")


def host_ms(fn: Callable[[], Any]) -> float:
    """ms of ``fn`` on the host clock (the engine rows' device times come from the backend's CUDA events)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def timed_calls(s: GridSettings, fn: Callable[[], float]) -> list[float]:
    """Up to ``s.calls`` values of ``fn`` (ms each), stopping after ``s.row_seconds`` once 20 are in."""
    values, start = [], time.perf_counter()
    while len(values) < s.calls and (len(values) < 20 or time.perf_counter() - start < s.row_seconds):
        values.append(fn())
    return values


class Grid:
    """The rows, written as they come: one JSON line each in ``<tag>.jsonl``."""

    def __init__(self, s: GridSettings, bench: Bench) -> None:
        self.s, self.bench = s, bench
        self.cuda = torch.device(s.device).type == "cuda"
        geometry = bench.reference.geometry
        self.planes = geometry.planes(bench.frames.images)
        needed = max((*s.batches, *s.compile_batches))
        self.parity = self.planes[np.arange(needed) % len(self.planes)]  # the frames every row labels
        self.rows: list[dict[str, Any]] = []
        self.jsonl = s.out / f"{s.tag}.jsonl"
        self.jsonl.write_text("")
        self.meta = {
            "kind": "meta",
            "device": device_info(s.device),
            "versions": library_versions(),
            "geometry": geometry.to_dict(),
            "frames_source": bench.frames.source,
            "weights": bench.identity.label,
            "weights_warning": bench.identity.warning,
            "timer": "cuda-events" if self.cuda else "host-clock",
            "settings": {k: str(v) for k, v in asdict(s).items()},
        }
        self.write(self.meta)
        with tf32_matmul(False):
            self.reference_mask = self.engine("eager", "fp32", s.batches[0]).run(self.parity)[0]

    def write(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if row["kind"] != "meta":
            self.rows.append(row)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def engine(self, mode: str, precision: str, batch: int, sdpa: str = "auto"):
        spec = BackendSpec(MODES[mode], self.s.device, "fp32" if precision == "tf32" else precision, batch, sdpa=sdpa)
        return make_backend(spec, self.bench.deployment)

    def engine_row(self, mode: str, precision: str, batch: int, sdpa: str) -> dict[str, Any]:
        s = self.s
        start = time.perf_counter()
        backend = self.engine(mode, precision, batch, sdpa)
        build_s = time.perf_counter() - start
        frames = self.planes[np.arange(batch) % len(self.planes)]
        stage: dict[str, list[float]] = {"model": [], "engine": []}

        def call() -> float:
            backend(frames)
            t = backend.last_timings_ms
            stage["engine"].append(sum(t.values()))
            return t["model_labelling"]

        for _ in range(s.warmup):
            backend(frames)
        stage["model"] = timed_calls(s, call)
        with torch.inference_mode():
            compute, static = backend.compute, backend.staging.input
            self.sync()
            start = time.perf_counter()

            def once() -> float:
                compute(static)
                return 0.0

            loops = len(timed_calls(s, once))
            self.sync()
            wall = time.perf_counter() - start
        mask = backend.run(self.parity)[0]
        return {
            "backend": backend.name, "mode": mode, "sdpa": sdpa, "cuda_graph": hasattr(backend.compute, "graph"),
            "precision": precision, "matmul_precision": torch.get_float32_matmul_precision(), "batch": batch, "build_s": round(build_s, 2),
            "model_ms": summarize(stage["model"]), "engine_ms": summarize(stage["engine"]),
            "model_ms_per_frame": float(np.median(stage["model"])) / batch,
            "frames_per_s": batch * loops / wall,
            "label_agreement": float(np.mean(mask == self.reference_mask)),
        }

    def run_engine(self, mode: str, precision: str, batch: int, sdpa: str = "auto") -> None:
        label = f"{MODES[mode]} {precision} b{batch}" + (f" sdpa {sdpa}" if sdpa != "auto" else "")
        failed = {"kind": "engine", "backend": MODES[mode], "mode": mode, "sdpa": sdpa, "precision": precision, "batch": batch}
        if self.s.budget_s is not None and time.monotonic() - STARTED + NEEDS_S[mode] > self.s.budget_s:
            print(f"  {label}: skipped, --budget-s {self.s.budget_s:g} would be passed", flush=True)
            self.write({**failed, "error": f"skipped: --budget-s {self.s.budget_s:g} would be passed"})
            return
        try:
            # fp32 rows with TF32 off or on; reduced precisions as `run` runs them (their fp32 labelling product at TF32)
            with tf32_matmul(precision == "tf32") if precision in ("fp32", "tf32") else nullcontext():
                row = {"kind": "engine", **self.engine_row(mode, precision, batch, sdpa), "error": None}
            m = row["model_ms"]
            print(f"  {label}: model p50 {m['p50']:.3f} p99 {m['p99']:.3f} ms, {row['frames_per_s']:.0f} frames/s, "
                  f"labels {row['label_agreement']:.2%}", flush=True)
        except Exception as exc:  # out of memory, compile error: recorded, the grid goes on
            row = {**failed, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
            print(f"  {label}: FAILED {row['error'][:300]}", flush=True)
        finally:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
        self.write(row)

    def run_jpeg(self) -> None:
        """The overlay's encode at the clip's frame size: OpenCV on the host (what the CPU pays per frame), and on
        CUDA nvJPEG (torchvision.io.encode_jpeg on a device tensor, compressed bytes back on the host)."""
        gray = self.bench.frames.images[0]
        rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB) if gray.ndim == 2 else gray
        self.write(self.jpeg_row("opencv", rgb, lambda: host_ms(lambda: encode_jpeg(rgb))))
        if not self.cuda:
            self.write({"kind": "jpeg", "encoder": "nvjpeg", "error": f"skipped: {self.s.device} is not a CUDA device"})
            return
        try:
            from torchvision.io import encode_jpeg as device_jpeg
        except ImportError as exc:
            self.write({"kind": "jpeg", "encoder": "nvjpeg", "error": f"skipped: torchvision missing ({exc})"})
            return
        chw = torch.from_numpy(rgb).to(self.s.device).permute(2, 0, 1).contiguous()

        def nvjpeg() -> float:  # host clock: the call returns once the bytes are on the host
            return host_ms(lambda: device_jpeg(chw, quality=DEFAULT_JPEG_QUALITY).cpu())

        try:
            self.write(self.jpeg_row("nvjpeg", rgb, nvjpeg))
        except Exception as exc:  # torchvision built without nvJPEG
            self.write({"kind": "jpeg", "encoder": "nvjpeg", "error": f"{type(exc).__name__}: {exc}"})

    def jpeg_row(self, encoder: str, rgb: np.ndarray, fn: Callable[[], float]) -> dict[str, Any]:
        for _ in range(self.s.warmup):
            fn()
        ms = summarize(timed_calls(self.s, fn))
        print(f"  jpeg {encoder} {rgb.shape[1]}x{rgb.shape[0]}: p50 {ms['p50']:.2f} p99 {ms['p99']:.2f} ms", flush=True)
        return {"kind": "jpeg", "encoder": encoder, "size": list(rgb.shape[:2]), "quality": DEFAULT_JPEG_QUALITY,
                "bytes": len(encode_jpeg(rgb)), "ms": ms, "error": None}


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    warning = meta["weights_warning"]
    lines = [
        f"# bonestream engine grid: {device_slug(meta['device'])}", "",
        f"- device: {describe_device(meta['device'])}",
        f"- input: {meta['geometry']['input_size'][0]}x{meta['geometry']['input_size'][1]}, stride {meta['geometry']['stride']}, "
        f"frames from {meta['frames_source']}; timer: {meta['timer']}",
        f"- weights: {meta['weights']}" + (f" -- **{warning}**" if warning else ""),
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", "",
        "ms per call (batch); model = model + labelling stage; engine = upload + model + download; frames/s of a "
        "back-to-back model loop; labels: share of patch labels equal to torch eager fp32's on the same frames.", "",
        "| backend | CUDA graph | precision | batch | calls | model p50 | p99 | p99.9 | engine p50 | p99 | ms/frame | frames/s | labels | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "engine"):
        name = r["backend"] + (f" (sdpa {r['sdpa']})" if r.get("sdpa", "auto") != "auto" else "")
        if r["error"]:
            note = r["error"] if r["error"].startswith("skipped") else f"failed: {r['error']}"
            lines.append(f"| {name} | | {r['precision']} | {r['batch']} | {note[:120].replace('|', '/')} |")
            continue
        m, e = r["model_ms"], r["engine_ms"]
        lines.append(f"| {name} | {'yes' if r['cuda_graph'] else 'no'} | {r['precision']} | {r['batch']} | {m['count']} | "
                     f"{m['p50']:.3f} | {m['p99']:.3f} | {m['p99.9']:.3f} | {e['p50']:.3f} | {e['p99']:.3f} | "
                     f"{r['model_ms_per_frame']:.3f} | {r['frames_per_s']:.0f} | {100 * r['label_agreement']:.2f}% | {r['build_s']:.1f} |")
    lines += ["", "| JPEG encoder | size | p50 ms | p99 ms | bytes |", "|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "jpeg"):
        if r["error"]:
            lines.append(f"| {r['encoder']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['encoder']} | {r['size'][1]}x{r['size'][0]} | {r['ms']['p50']:.2f} | {r['ms']['p99']:.2f} | {r['bytes']} |")
    return "\n".join(lines) + "\n"


def plot(meta: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> Path:
    """Model p99 and frames/s against batch size, one line per backend and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["kind"] == "engine" and not r["error"] and r.get("sdpa", "auto") == "auto"]  # kernel rows: the table
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({(r["backend"], r["precision"]) for r in ok}):
        line = sorted((r for r in ok if (r["backend"], r["precision"]) == key), key=lambda r: r["batch"])
        batches = [r["batch"] for r in line]
        lat.plot(batches, [r["model_ms"]["p99"] for r in line], marker="o", label=" ".join(key))
        thr.plot(batches, [r["frames_per_s"] for r in line], marker="o", label=" ".join(key))
    for ax, ylabel in ((lat, "model + labelling p99 per call (ms)"), (thr, "frames / s (back-to-back)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    lat.set_title(device_slug(meta["device"]), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    write_figure(fig, path, meta["weights_warning"])
    plt.close(fig)
    return path


def run_grid(s: GridSettings) -> list[Path]:
    s.out.mkdir(parents=True, exist_ok=True)
    bench = prepare(BenchSettings(device=s.device, input_size=s.input_size, weights=s.weights, clip=s.clip, frames=s.frames))
    grid = Grid(s, bench)
    print(f"engine grid on {describe_device(grid.meta['device'])}: writing {grid.jsonl}", flush=True)
    for precision in s.precisions:
        for batch in s.batches:
            grid.run_engine("eager", precision, batch)
    for kernel in s.sdpa_kernels:  # which attention kernel is fastest here (the torch backends' --sdpa)
        grid.run_engine("eager", "bf16", 1, kernel)
    if s.jpeg:
        grid.run_jpeg()
    for precision in s.compile_precisions:
        for batch in s.compile_batches:
            grid.run_engine("compile", precision, batch)
    doc = {"meta": grid.meta, "rows": grid.rows}
    paths = [s.out / f"{s.tag}.json", s.out / f"{s.tag}.md", s.out / f"{s.tag}.png"]
    write_json_atomic(paths[0], doc)
    write_bytes_atomic(paths[1], markdown(grid.meta, grid.rows).encode())
    plot(grid.meta, grid.rows, paths[2])
    return [grid.jsonl, *paths]


def _precision(text: str) -> str:
    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {','.join(PRECISIONS)}")
    return text


def _kernel(text: str) -> str:
    if text not in SDPA_BACKENDS or text == "auto":
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {','.join(k for k in SDPA_BACKENDS if k != 'auto')}")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.engine_grid", description=__doc__.splitlines()[0])
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if present)")
    p.add_argument("--precisions", type=listed(_precision), help=f"comma list of {','.join(PRECISIONS)} (GPU default all, CPU fp32,bf16)")
    p.add_argument("--batch-sizes", dest="batches", type=listed(POSITIVE_INT), help="comma list (GPU default 1,8,32,64, CPU 1,2)")
    p.add_argument("--compile-precisions", type=listed(_precision), help="torch-compile rows' precisions (GPU default bf16,fp16, CPU none)")
    p.add_argument("--compile-batch-sizes", dest="compile_batches", type=listed(POSITIVE_INT), help="torch-compile rows' batch sizes (GPU default 1)")
    p.add_argument("--sdpa-kernels", type=listed(_kernel), help="attention kernels forced one by one, bf16 batch 1 (GPU default "
                   "cudnn,flash,efficient,math; CPU none)")
    p.add_argument("--calls", type=POSITIVE_INT, help="timed calls per row at most (GPU 1000, CPU 20)")
    p.add_argument("--row-seconds", type=POSITIVE, help="time per timed loop once 20 calls are in (GPU 4, CPU 2)")
    p.add_argument("--warmup", type=COUNT, help="calls per row before timing (GPU 20, CPU 2)")
    p.add_argument("--no-jpeg", dest="jpeg", action="store_const", const=False, help="skip the JPEG encode rows")
    p.add_argument("--input-size", type=input_size, help="model input HxW (default 224x224)")
    p.add_argument("--frames", type=POSITIVE_INT, help="real frames decoded from the clip (default 64)")
    p.add_argument("--weights", help="weights spec (default random:0: latency only, every output says RANDOM WEIGHTS)")
    p.add_argument("--clip", type=Path, help="video to take frames from (default: the shared sweep clip, else the phantom)")
    p.add_argument("--out", type=Path, help="results folder (default: the current folder)")
    p.add_argument("--tag", help="file name stem (default engine_grid)")
    p.add_argument("--budget-s", type=POSITIVE, help="seconds for the whole grid: rows that would not fit are skipped (default: none)")
    args = p.parse_args(argv)
    base = GridSettings.for_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if v is not None and k != "device"}
    paths = run_grid(replace(base, **given))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
