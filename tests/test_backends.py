"""Backends behind one interface: torch staging and timings, the engine cache, `auto` and its reported fallbacks,
GPU backends (skipped with the reason where CUDA or TensorRT is absent), and the CI-sized benchmark."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from benchmarks import bench
from pipeline.infer import select
from pipeline.infer.backend import BackendUnavailable, TorchBackend
from pipeline.infer.cache import EngineCache, EngineKey
from pipeline.infer.select import BackendSpec, make_backend, select_backend

SIZE = (32, 40)
NO_CUDA = "no CUDA device on this machine: GPU backends are exercised only where one is lent"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, *SIZE), dtype=np.uint8)


def test_torch_backend_chunks_pads_and_times(deployment, frames) -> None:
    single = TorchBackend(deployment)
    batched = TorchBackend(deployment, batch=2)  # 5 frames: chunks of 2, 2 and 1 (padded)
    mask, margin = batched(frames)
    assert mask.shape == margin.shape == (5, 4, 5) and mask.dtype == np.uint8 and margin.dtype == np.float32
    expected = [single(frames[i : i + 1]) for i in range(5)]
    np.testing.assert_array_equal(mask, np.concatenate([m for m, _ in expected]))
    np.testing.assert_allclose(margin, np.concatenate([g for _, g in expected]), atol=1e-5)
    assert set(batched.last_timings_ms) == {"host_to_device", "model_labelling", "device_to_host"}
    assert batched.last_timings_ms["model_labelling"] > 0
    assert (single.name, single.device, single.precision, single.batch) == ("torch", "cpu", "fp32", 1)


def _key(**changes) -> EngineKey:
    base = EngineKey("onnx-fused", "random:0", "ref1", (32, 40), 8, 1, "fp32", "cpu", (("torch", "2.13"),))
    return replace(base, **changes)


def test_engine_cache_hits_and_invalidates(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    builds = []

    def build(path: Path) -> None:
        builds.append(path)
        path.write_bytes(b"engine")

    path, hit = cache.fetch(_key(), ".onnx", build)
    assert not hit and path.read_bytes() == b"engine" and len(builds) == 1
    assert cache.fetch(_key(), ".onnx", build) == (path, True) and len(builds) == 1
    assert cache.facts(_key())["key"]["reference"] == "ref1"
    changes = [dict(weights="sha256:" + "0" * 64), dict(reference="ref2"), dict(input_size=(64, 80)), dict(stride=4),
               dict(batch=4), dict(precision="fp16"), dict(device="NVIDIA H100 sm_90"), dict(versions=(("torch", "2.14"),))]
    for change in changes:  # any part of the key changes: a miss and a rebuild, never the old engine
        other, hit = cache.fetch(_key(**change), ".onnx", build)
        assert not hit and other != path, change
    assert len(builds) == 1 + len(changes)


def test_engine_cache_never_leaves_half_an_engine(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def crash(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("build died")

    with pytest.raises(RuntimeError, match="build died"):
        cache.fetch(_key(), ".onnx", crash)
    assert list(tmp_path.iterdir()) == []


def test_auto_reports_its_choice_and_every_fallback(deployment, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider"])
    monkeypatch.setitem(select.CANDIDATES, "cpu", ("tensorrt", "onnxruntime", "torch"))
    selection = select_backend(BackendSpec("auto"), deployment, EngineCache(tmp_path), trials=1)
    assert selection.backend.name == "torch" and set(selection.measured_ms) == {"torch"}
    reasons = {f.backend: f.reason for f in selection.fallbacks}
    assert "CUDA" in reasons["tensorrt"] and "no CPUExecutionProvider" in reasons["onnxruntime"]
    text = selection.describe()
    assert "torch (cpu, fp32, batch 1) chosen by auto" in text
    assert "fallback: tensorrt unavailable" in text and "fallback: onnxruntime unavailable" in text


def test_named_backend_that_cannot_run_is_an_error(deployment, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="CUDA"):
        select_backend(BackendSpec("tensorrt"), deployment, EngineCache(tmp_path))
    with pytest.raises(BackendUnavailable, match="bfloat16"):
        make_backend(BackendSpec("onnxruntime", precision="bf16"), deployment, EngineCache(tmp_path))
    with pytest.raises(ValueError, match="not one of"):
        make_backend(BackendSpec("tflite"), deployment)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("name", ["torch", "torch-compile", "onnxruntime", "onnxruntime-trt", "tensorrt"])
def test_gpu_backends_match_torch_fp32(deployment, frames, name: str, tmp_path: Path) -> None:
    if name == "tensorrt":
        pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed")
    if name.startswith("onnxruntime"):
        wanted = {"onnxruntime": "CUDAExecutionProvider", "onnxruntime-trt": "TensorrtExecutionProvider"}[name]
        if wanted not in onnxruntime.get_available_providers():
            pytest.skip(f"onnxruntime has no {wanted}: install onnxruntime-gpu with its CUDA/TensorRT libraries")
    reference = TorchBackend(deployment, batch=2)(frames)
    backend = make_backend(BackendSpec(name, "cuda", batch=2), deployment, EngineCache(tmp_path))
    mask, margin = backend(frames)
    assert np.mean(mask == reference[0]) >= 0.99
    np.testing.assert_allclose(margin, reference[1], atol=1e-2)
    assert backend.last_timings_ms["model_labelling"] > 0  # CUDA events


def test_ci_sized_benchmark_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    settings = replace(
        bench.BenchSettings.for_device("cpu"), backends=("torch",), precisions=("fp32",), batches=(1, 2), frames=2, input_size=(32, 40),
        calibration_frames=2, baseline_frames=1, out=tmp_path, cache_dir=str(tmp_path / "engines"),
    )
    doc, paths = bench.run_benchmark(settings)
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench_latency.png", "bench_stages.png", "bench_throughput.png"]
    saved = json.loads(paths[0].read_text())
    assert [(r["backend"], r["batch"]) for r in saved["runs"]] == [("torch", 1), ("torch", 2)]
    run = saved["runs"][0]
    for stage in ("prepare", "host_to_device", "model_labelling", "mask_overlay", "device_to_host", "encode", "publish", "end_to_end"):
        assert run["stages_ms"][stage]["count"] >= 1 and "p99.9" in run["stages_ms"][stage]
    assert saved["meta"]["weights_warning"].startswith("RANDOM WEIGHTS") and saved["meta"]["loadavg_start"]
    assert saved["wire"]["received"] == saved["wire"]["sent"] == 2 + 2 * 1 and saved["wire"]["malformed"] == 0  # a real subscriber got them
    assert saved["host_work_ms"]["torch fp32 b1"]["count"] == 2
    assert saved["baseline"]["stride"] == 4 and saved["runs"][0]["speedup_vs_original"] > 0
    table = paths[1].read_text()
    assert "| torch | fp32 | 2 |" in table and "RANDOM WEIGHTS" in table and "load average" in table


def test_torch_compile_engines_past_the_recompile_limit(deployment, frames) -> None:
    """Every torch-compile engine is a recompile of EngineGraph.forward: more engines than dynamo's recompile_limit
    (lowered here to keep the test short; 8 by default) still build and run, each matching eager torch."""
    with torch._dynamo.config.patch(recompile_limit=1, accumulated_recompile_limit=1):
        engines = [TorchBackend(deployment, batch=b, mode="compile") for b in (1, 2)]  # two static shapes: one past the limit
        for engine in engines:
            mask, margin = engine(frames)
            reference = TorchBackend(deployment, batch=engine.batch)(frames)
            np.testing.assert_array_equal(mask, reference[0])
            np.testing.assert_allclose(margin, reference[1], atol=1e-4)


def test_benchmark_writes_json_as_it_goes_and_skips_a_failing_row(tmp_path: Path, monkeypatch) -> None:
    """A configuration failing mid-run is reported and dropped; the others' rows, and the JSON written after every
    turn (a cut-off run keeps its numbers), survive."""
    settings = replace(
        bench.BenchSettings.for_device("cpu"), backends=("torch",), precisions=("fp32",), batches=(1, 2), frames=4, turn=2, input_size=(32, 40),
        calibration_frames=2, baseline_frames=0, out=tmp_path, cache_dir=str(tmp_path / "engines"),
    )
    seen_on_failure = []
    build_run = bench.build_run

    def failing_b2(b: bench.Bench, config: bench.Config) -> bench.Run:
        run = build_run(b, config)
        if config.batch == 2:
            compute, calls = run.segmenter.backend.compute, []

            def compute_then_fail(planes: torch.Tensor):
                calls.append(1)
                if len(calls) > 1:  # its second turn: the first turn's rows are on disk already
                    seen_on_failure.append(json.loads((tmp_path / "bench.json").read_text()))
                    raise RuntimeError("device lost")
                return compute(planes)

            run.segmenter.backend.compute = compute_then_fail
        return run

    monkeypatch.setattr(bench, "build_run", failing_b2)
    doc, paths = bench.run_benchmark(settings)
    assert seen_on_failure[0]["meta"]["partial"] and [r["batch"] for r in seen_on_failure[0]["runs"]] == [1, 2]
    saved = json.loads(paths[0].read_text())
    assert not saved["meta"]["partial"] and [r["batch"] for r in saved["runs"]] == [1]
    assert saved["runs"][0]["frames"] == 4 and saved["runs"][0]["throughput_fps"] > 0
    assert saved["skipped"] == [{"config": "torch fp32 b2", "reason": "RuntimeError: device lost"}]


def test_attention_kernel_is_a_setting(deployment, frames) -> None:
    """--sdpa forces one attention kernel (the GPU benchmark sweeps them); math matches torch's own choice here."""
    auto = TorchBackend(deployment, batch=2)(frames)
    mask, margin = make_backend(BackendSpec("torch", batch=2, sdpa="math"), deployment)(frames)
    np.testing.assert_array_equal(mask, auto[0])
    np.testing.assert_allclose(margin, auto[1], atol=1e-4)
    with pytest.raises(ValueError, match="sdpa 'fast' is not one of"):
        TorchBackend(deployment, sdpa="fast")


def test_cuda_defaults_resample_on_the_device_unless_chosen() -> None:
    """On CUDA calibrate and bench resample on the device when no resampling is named (no host Lanczos per frame);
    the CPU keeps the host default, and a named one is kept everywhere."""
    from argparse import Namespace

    from models.resampling import DEFAULT_RESAMPLING
    from pipeline.commands.calibrate import geometry_from

    assert geometry_from(Namespace(device="cuda:1", resampling=None)).resampling == "bilinear-aa"
    assert geometry_from(Namespace(device="cuda", resampling="area")).resampling == "area"
    assert geometry_from(Namespace(device="cpu", resampling=None)).resampling == DEFAULT_RESAMPLING
    assert bench.BenchSettings.for_device("cuda").resampling == "bilinear-aa"
    assert bench.BenchSettings.for_device("cpu").resampling == DEFAULT_RESAMPLING


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_engines_run_on_their_own_stream_with_tf32(deployment, frames) -> None:
    backend = TorchBackend(deployment, "cuda", batch=2)
    stream = backend.staging.stream
    assert stream is not None and stream != torch.cuda.default_stream()
    with backend.staging.active():
        assert torch.cuda.current_stream() == stream
    assert torch.get_float32_matmul_precision() == "high"  # set at build, in one place; reading it must not raise
    mask, _ = backend(frames)
    assert np.mean(mask == TorchBackend(deployment, batch=2)(frames)[0]) >= 0.99


def test_cuda_tf32_default_keeps_torchs_flags_in_agreement() -> None:
    """TF32 is set so that both of torch's APIs read it (setting only ``fp32_precision`` makes every read of the legacy
    one raise on torch >= 2.9, inductor's included), and a precision fixed for an A/B row is left alone."""
    from models.placement import cuda_float32_math, fp32_matmul

    with fp32_matmul("highest"):
        cuda_float32_math()  # what every CUDA build calls: leaves the row's choice
        assert torch.get_float32_matmul_precision() == "highest"
    before = torch.get_float32_matmul_precision()
    try:
        cuda_float32_math()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif(not torch.cuda.is_available() or "CUDAExecutionProvider" not in onnxruntime.get_available_providers(), reason=NO_CUDA)
def test_onnxruntime_cuda_launches_on_the_engine_stream(deployment, tmp_path: Path) -> None:
    backend = make_backend(BackendSpec("onnxruntime", "cuda", batch=2), deployment, EngineCache(tmp_path))
    options = backend.session.get_provider_options()["CUDAExecutionProvider"]
    assert options["user_compute_stream"] == str(backend.staging.stream.cuda_stream)  # not the legacy default stream


def test_a_forced_attention_kernel_that_cannot_run_is_one_line(deployment) -> None:
    with pytest.raises(BackendUnavailable, match=r"^--sdpa cudnn: "):
        TorchBackend(deployment, sdpa="cudnn")  # cuDNN attention has no CPU kernel
