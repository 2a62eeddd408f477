"""Benchmark backends x precisions x batch sizes side by side on the same frames, with the original method's cost.

    python -m benchmarks.bench [--device cuda] [--backends torch,onnxruntime] [--frames 1000] ...
    bonestream bench ...        (the same code)

Writes ``<tag>.json``, ``<tag>.md`` and ``<tag>_*.png`` in ``--out`` (default: the current folder) and prints the table;
``--out benchmarks/results/<device>`` updates the results kept in the repository.
Defaults depend on the device: on a GPU 1000 frames after 10 warm-up batches per configuration (Holoscan's count)
and 16 paced streams; on the CPU a CI-sized run (20 frames, 1 warm-up batch, stated in the output).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import dataclass, field, fields, replace
from itertools import product
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.arguments import add_arguments
from benchmarks.frames import FrameSet, default_clip, load_frames
from benchmarks.report import add_ratios, describe_device, device_info, device_slug, summarize_run, write_results
from benchmarks.runner import HOST_STAGES, Config, Run, Wire, memory_in_use_mb, take_turns, warm_up
from benchmarks.streams import StreamLoad, paced_streams
from benchmarks.targets import EQUAL_LABELS, check_targets
from calibration.calibrate import calibrate
from calibration.reference import Reference
from pipeline.commands.common import weights_for
from models.errors import BonestreamError
from models.loader import load_model
from models.preprocess import Geometry, detect_roi
from models.resampling import DEFAULT_RESAMPLING, device_resampling
from models.vit import DinoViT
from models.weights import WeightsIdentity
from pipeline.commands.paths import check_output_dir
from pipeline.infer.backend import TorchBackend
from pipeline.infer.cache import EngineCache, library_versions
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import DTYPES
from pipeline.infer.select import CANDIDATES, BackendSpec, make_backend, precision_candidates, runs_at
from pipeline.publish.files import write_json_atomic
from pipeline.publish.outputs import MessageFactory
from pipeline.segment.segmenter import BoneSegmenter
from pipeline.stats import summarize

ORIGINAL_STRIDE = 4  # the original co-segmentation's overlapping-patch extractor


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run. The defaults are the CPU's CI-sized run; ``for_device`` gives the GPU's full one."""

    device: str = "cpu"
    backends: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    precisions: tuple[str, ...] = ("fp32", "int8")  # on the CPU: fp32 and what it runs natively (for_device)
    batches: tuple[int, ...] = (1, 4)
    frames: int = 20  # per configuration
    warmup: int = 1  # batches per configuration
    turn: int = 4  # frames per configuration per turn
    input_size: tuple[int, int] | None = (224, 224)  # None: the clip's own geometry (short side 224, aspect kept)
    stride: int = 8
    resampling: str = DEFAULT_RESAMPLING  # host (PIL/OpenCV) or device (bilinear-aa, bicubic-aa) resampling
    sdpa: str = "auto"  # attention kernel of the torch backends (pipeline.choices.SDPA_BACKENDS)
    weights: str = "random:0"
    reference: str | None = None  # a reference file; None calibrates on calibration_frames of the clip
    calibration_frames: int = 4
    baseline_frames: int = 2  # original method (stride 4), 0 to skip
    streams: int = 0  # paced streams on the fastest configuration, 0 to skip
    stream_fps: float = 30.0
    stream_seconds: float = 4.0
    clip: Path | None = None  # None: the shared sweep clip beside the repository if it is there, else the phantom
    out: Path = Path(".")
    tag: str = "bench"
    cache_dir: str | None = None

    @classmethod
    def for_device(cls, device: str) -> "BenchSettings":
        if torch.device(device).type == "cpu":  # bf16 where AMX or AVX512-BF16 runs it, int8 where VNNI does
            return cls(device=device, precisions=tuple(precision_candidates(device)[0]))
        return cls(
            device=device, backends=CANDIDATES["cuda"], precisions=tuple(DTYPES), batches=(1, 8, 32), frames=1000, warmup=10,
            turn=250, baseline_frames=100, streams=16, resampling=device_resampling(device),
        )


@dataclass
class Bench:
    """What a run builds before measuring: frames, model, reference, and the engines' common source."""

    settings: BenchSettings
    frames: FrameSet
    model: DinoViT
    identity: WeightsIdentity
    reference: Reference
    deployment: Deployment
    cache: EngineCache
    skipped: list[dict[str, str]] = field(default_factory=list)


def calibrated_reference(s: BenchSettings, frames: FrameSet, model: DinoViT, identity: WeightsIdentity) -> Reference:
    if s.reference:
        return Reference.load(s.reference)
    picks = np.linspace(0, len(frames.images) - 1, min(s.calibration_frames, len(frames.images))).round().astype(int)
    images = [frames.images[i] for i in picks]
    geometry = Geometry.fit(images[0].shape[:2], detect_roi(images), input_size=s.input_size, stride=s.stride, resampling=s.resampling)
    return calibrate(model, identity, geometry, images, [frames.names[i] for i in picks], progress=False, device=s.device)


def prepare(s: BenchSettings) -> Bench:
    frames = load_frames(min(s.frames, 1000), s.clip or default_clip())
    model, identity = load_model(s.weights, progress=False)
    reference = calibrated_reference(s, frames, model, identity)
    deployment = Deployment.from_reference(model, identity.label, reference)
    return Bench(s, frames, model, identity, reference, deployment, EngineCache(s.cache_dir))


def build_run(bench: Bench, config: Config) -> Run:
    s = bench.settings
    before = memory_in_use_mb(s.device)
    start = time.perf_counter()
    backend = make_backend(BackendSpec(config.backend, s.device, config.precision, config.batch, sdpa=s.sdpa), bench.deployment, bench.cache)
    segmenter = BoneSegmenter(bench.reference, backend, bench.identity)
    warm_up(segmenter, bench.frames, config.batch, s.warmup)
    return Run(config, segmenter, time.perf_counter() - start, memory_in_use_mb(s.device) - before)


def build_runs(bench: Bench) -> list[Run]:
    """torch fp32 batch 1 first (every other row is compared with it), then every configuration asked for that its
    backend builds at all (select.runs_at: int8 only with onnxruntime on the CPU, no bf16 in ONNX Runtime)."""
    s = bench.settings
    reference = Config("torch", "fp32", 1)
    asked = (Config(*p) for p in product(s.backends, s.precisions, s.batches))
    configs = [reference] + [c for c in asked if c != reference and runs_at(c.backend, c.precision, s.device)]
    runs = []
    for config in configs:
        try:
            runs.append(build_run(bench, config))
            print(f"  built {config.label} in {runs[-1].build_s:.1f} s", flush=True)
        except Exception as exc:  # a configuration that cannot run here is reported, the others still run
            skip(bench, config.label, exc)
    return runs


def original_cost(bench: Bench) -> dict[str, Any] | None:
    """fp32 eager at stride 4 (55 x 55 patches at 224): what the original extractor costs per frame, same frames."""
    s = bench.settings
    if not s.baseline_frames:
        return None
    geometry = replace(bench.reference.geometry, stride=ORIGINAL_STRIDE)
    backend = TorchBackend(replace(bench.deployment, geometry=geometry), s.device, "fp32", 1)
    times = []
    for i in range(s.baseline_frames):
        backend(geometry.planes([bench.frames.images[i % len(bench.frames.images)]]))
        times.append(backend.last_timings_ms["model_labelling"])
    return {"input_size": list(geometry.input_size), "stride": ORIGINAL_STRIDE, "grid": list(geometry.grid), "model_ms": summarize(times)}


def labelling_cost(bench: Bench, calls: int = 50) -> dict[str, Any]:
    """The fused labelling alone (fp32, torch, on the device) on keys of the deployment's grid: its share of the
    model + labelling stage, which the fused engines cannot split."""
    s = bench.settings
    labeller = bench.reference.labeller(s.device)
    keys = torch.randn(1, *bench.reference.geometry.grid, 384, device=s.device)
    times = []
    with torch.inference_mode():
        for _ in range(calls + 1):
            start = time.perf_counter()
            labeller(keys)
            if keys.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    return summarize(times[1:])


def host_work(runs: list[Run]) -> dict[str, Any]:
    """Per frame, everything but the model (prepare, transfers, mask + overlay, encode, publish) of each batch-1
    run: the host's share the GPU waits on."""
    out = {}
    for run in runs:
        if run.config.batch == 1:
            per_batch = np.sum([run.stages[stage] for stage in HOST_STAGES], axis=0)
            out[run.config.label] = summarize(per_batch)
    return out


def peak_memory_mb(device: str) -> dict[str, float]:
    """Process peak RSS, and on CUDA the peak of torch's allocator (TensorRT and ONNX Runtime allocate outside it)."""
    peak = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.device(device).type == "cuda":
        peak["torch_cuda_peak_mb"] = torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return peak


def stream_test(bench: Bench, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Paced streams on the fastest configuration with equal labels, its engine rebuilt for a batch of all streams."""
    s = bench.settings
    equal = [r for r in rows if (r["label_agreement"] or 0) >= EQUAL_LABELS]
    if not s.streams or not equal:
        return None
    best = min(equal, key=lambda r: r["model_ms_per_frame"])
    config = Config(best["backend"], best["precision"], s.streams)
    run = build_run(bench, config)
    result = paced_streams(run.segmenter, bench.frames, StreamLoad(s.streams, s.stream_fps, s.stream_seconds))
    return {"backend": config.backend, "precision": config.precision, "batch": config.batch, **result}


def skip(bench: Bench, what: str, exc: Exception) -> None:
    """A part that failed, reported on the console and in the results; the benchmark goes on without it."""
    bench.skipped.append({"config": what, "reason": f"{type(exc).__name__}: {exc}"})
    print(f"  skipped {what}: {bench.skipped[-1]['reason']}", flush=True)


def guarded(bench: Bench, what: str, part: Callable[[], Any]) -> Any:
    """``part()``, or None (and ``what`` skipped with its reason) when it raises."""
    try:
        return part()
    except Exception as exc:  # one failing part must not lose the others' numbers
        skip(bench, what, exc)
        return None


def result_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run that measured anything, compared with the first (torch fp32 batch 1 when it ran)."""
    measured = [run for run in runs if run.stages["end_to_end"]]
    return [summarize_run(run, measured[0]) for run in measured]


def run_benchmark(s: BenchSettings) -> tuple[dict[str, Any], list[Path]]:
    """The whole benchmark; ``<tag>.json`` is rewritten after every step (a cut-off run keeps what it measured)."""
    loadavg_start = [round(v, 2) for v in os.getloadavg()]
    info = device_info(s.device)
    print(f"preparing: {s.frames} frames per configuration, {s.warmup} warm-up batches on {describe_device(info)}", flush=True)
    bench = prepare(s)
    json_path = s.out / f"{s.tag}.json"
    runs = build_runs(bench)  # take_turns takes a configuration that fails out of it (it is in skipped)
    wire = Wire()
    doc: dict[str, Any] = {
        "meta": {
            "device": info,
            "device_slug": device_slug(info),
            "geometry": bench.reference.geometry.to_dict(),
            "reference": bench.reference.id,
            "weights": bench.identity.label,
            "weights_warning": bench.identity.warning,
            "frames_source": bench.frames.source,
            "frames": s.frames,
            "warmup": s.warmup,
            "turn_frames": s.turn,
            "versions": library_versions(),
            "loadavg_start": loadavg_start,
            "settings": {f.name: str(getattr(s, f.name)) for f in fields(s)},
            "partial": True,  # until the last step has run
        },
        "decode_ms": summarize(bench.frames.decode_ms),
        "runs": [],
        "skipped": bench.skipped,
    }

    def save() -> None:
        doc["runs"] = result_rows(runs)
        doc["wire"] = wire.counters()
        write_json_atomic(json_path, doc)

    save()
    try:
        if runs:
            take_turns(runs, bench.frames, s.frames, s.turn, wire, MessageFactory(runs[0].segmenter, "bench"), lambda run, exc: skip(bench, run.config.label, exc), save)
    finally:
        wire.close()
    baseline = guarded(bench, "original method (stride 4)", lambda: original_cost(bench))
    rows = result_rows(runs)
    if rows:
        add_ratios(rows, rows[0]["model_ms_per_frame"], baseline["model_ms"]["p50"] if baseline else None)
    doc.update(labelling_ms=guarded(bench, "labelling alone", lambda: labelling_cost(bench)), host_work_ms=host_work(runs))
    doc.update(wire=wire.counters(), runs=rows, baseline=baseline)
    write_json_atomic(json_path, doc)
    doc["streams"] = guarded(bench, f"{s.streams} paced streams", lambda: stream_test(bench, rows))
    doc["meta"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    doc["meta"]["partial"] = False
    doc["memory"] = peak_memory_mb(s.device)
    doc["targets"] = check_targets(doc)
    return doc, write_results(doc, s.out, s.tag)


def settings_from(args: argparse.Namespace) -> BenchSettings:
    base = BenchSettings.for_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    given = {f.name: getattr(args, f.name) for f in fields(BenchSettings) if getattr(args, f.name, None) is not None}
    if given.get("input_size") == "clip":
        given["input_size"] = None
    if getattr(args, "reference", None) and getattr(args, "weights", None) is None:  # the reference's own weights
        given["weights"] = weights_for(Reference.load(args.reference), None)
    return replace(base, **given)


def check_inputs(s: BenchSettings) -> None:
    """The clip and the results folder, checked before the model loads: a bad one is one line, not minutes lost."""
    if s.clip is not None and not s.clip.is_file():
        raise BonestreamError(f"--clip {s.clip}: no such video file")
    check_output_dir(s.out, "--out")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    check_inputs(settings)
    doc, paths = run_benchmark(settings)
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
