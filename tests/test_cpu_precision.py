"""Reduced precision on the CPU: the flags that decide what runs natively, ``--precision auto`` and its fallbacks,
the parity gate on every reduced precision it keeps, the OpenVINO backend (skipped where it is not installed; CI
installs it) and what happens without it, and int8's weight range by VNNI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.infer import export, openvino_backend, select
from pipeline.infer.backend import BackendUnavailable
from pipeline.infer.cache import EngineCache
from pipeline.infer.cpu_features import CpuFeatures, parse_cpuinfo
from pipeline.infer.parity import check_parity
from pipeline.infer.select import BackendSpec, make_backend, select_backend

SIZE = (32, 40)
SAPPHIRE_RAPIDS = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC_ROME = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n"

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed (pip install 'bonestream[openvino]')")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, *SIZE), dtype=np.uint8)


def as_cpu(monkeypatch, cpuinfo: str) -> CpuFeatures:
    """Every module that asks what this CPU runs natively gets ``cpuinfo``'s answer."""
    features = parse_cpuinfo(cpuinfo)
    for module in (select, export, openvino_backend):
        monkeypatch.setattr(module, "cpu_features", lambda: features)
    return features


def test_flags_decide_which_precisions_run_natively() -> None:
    amx, avx2 = parse_cpuinfo(SAPPHIRE_RAPIDS), parse_cpuinfo(EPYC_ROME)
    assert amx.model == "Intel(R) Xeon(R) Platinum 8480+" and amx.amx_bf16 and amx.fast_bf16 and amx.vnni
    assert amx.lacks("bf16") is None and amx.lacks("int8") is None and amx.lacks("fp32") is None
    assert "AMX-FP16" in amx.lacks("fp16")
    assert not avx2.fast_bf16 and not avx2.vnni
    assert "AMD EPYC 7B12 has no AMX-BF16 or AVX512-BF16" in avx2.lacks("bf16") and "emulated" in avx2.lacks("bf16")
    assert "no VNNI" in avx2.lacks("int8") and avx2.units() == "AVX2"


def test_auto_precision_without_amx_falls_back_to_fp32_and_says_why(deployment, monkeypatch, tmp_path: Path) -> None:
    as_cpu(monkeypatch, EPYC_ROME)
    monkeypatch.setitem(select.CANDIDATES, "cpu", ("onnxruntime", "torch"))
    selection = select_backend(BackendSpec("auto", precision="auto"), deployment, EngineCache(tmp_path), trials=1)
    assert selection.backend.precision == "fp32"
    assert set(selection.measured_ms) == {"onnxruntime fp32", "torch fp32"}
    reasons = {f.backend: f.reason for f in selection.fallbacks}
    assert "AMD EPYC 7B12 has no AMX-BF16" in reasons["bf16"] and "no VNNI" in reasons["int8"]
    assert "fallback: bf16 unavailable: AMD EPYC 7B12" in selection.describe()


def test_auto_precision_keeps_reduced_precision_only_through_the_gate(deployment, monkeypatch, tmp_path: Path) -> None:
    as_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    monkeypatch.setitem(select.CANDIDATES, "cpu", ("onnxruntime", "torch"))
    gated = []

    def refuse(backend) -> str:
        gated.append((backend.name, backend.precision))
        return f"{backend.name} {backend.precision}: parity REFUSED (test gate)"

    selection = select_backend(BackendSpec("auto", precision="auto"), deployment, EngineCache(tmp_path), trials=1, gate=refuse)
    assert selection.backend.precision == "fp32"
    assert sorted(gated) == [("onnxruntime", "int8"), ("torch", "bf16")]  # every reduced precision, never fp32
    reasons = {f.backend: f.reason for f in selection.fallbacks}
    assert "parity REFUSED" in reasons["torch bf16"] and "parity REFUSED" in reasons["onnxruntime int8"]

    passed = select_backend(BackendSpec("torch", precision="auto"), deployment, EngineCache(tmp_path), trials=1, gate=lambda b: None)
    assert set(passed.measured_ms) == {"torch fp32", "torch bf16"}  # a named backend, every native precision timed


def test_int8_uses_full_8_bit_weights_only_with_vnni(deployment, monkeypatch, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    as_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    full, _ = export.cached_onnx(deployment, batch=1, precision="int8", outputs="fused", cache=cache)
    as_cpu(monkeypatch, EPYC_ROME)
    reduced, _ = export.cached_onnx(deployment, batch=1, precision="int8", outputs="fused", cache=cache)
    assert full != reduced and reduced.name.startswith("onnx-7bit-") and not full.name.startswith("onnx-7bit-")
    assert full.read_bytes() != reduced.read_bytes()


@needs_openvino
def test_openvino_fp32_is_fp32_and_bf16_passes_the_parity_gate(deployment, frames, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    torch_fp32 = make_backend(BackendSpec("torch"), deployment, cache)
    ov_fp32 = make_backend(BackendSpec("openvino"), deployment, cache)
    mask, margin = ov_fp32(frames)
    ref_mask, ref_margin = torch_fp32(frames)
    assert mask.dtype == np.uint8 and mask.shape == ref_mask.shape == (4, 4, 5)
    # fp32 for real: OpenVINO would run bf16 on an AMX CPU unless told otherwise, and margins would drift by 1e-2
    assert np.array_equal(mask, ref_mask) and np.abs(margin - ref_margin).max() < 1e-4
    assert ov_fp32.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    if parse_cpuinfo(Path("/proc/cpuinfo").read_text()).fast_bf16:
        bf16 = make_backend(BackendSpec("openvino", precision="bf16"), deployment, cache)
        keys = make_backend(BackendSpec("openvino", precision="bf16", outputs="keys"), deployment, cache)
        result = check_parity(bf16, keys, deployment, frames)
        assert result.passed and result.key_cosine > 0.99, result.describe()


@needs_openvino
def test_openvino_refuses_bf16_where_it_would_be_emulated(deployment, monkeypatch, tmp_path: Path) -> None:
    as_cpu(monkeypatch, EPYC_ROME)
    with pytest.raises(BackendUnavailable, match="openvino bf16: AMD EPYC 7B12 has no AMX-BF16"):
        make_backend(BackendSpec("openvino", precision="bf16"), deployment, EngineCache(tmp_path))
    with pytest.raises(BackendUnavailable, match="runs on the CPU only"):
        make_backend(BackendSpec("openvino", device="meta"), deployment, EngineCache(tmp_path))


def test_without_openvino_auto_says_how_to_install_it(deployment, monkeypatch, tmp_path: Path) -> None:
    """An install without [openvino] (None in sys.modules makes the import fail as a missing package does)."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(select.CANDIDATES, "cpu", ("openvino", "torch"))
    selection = select_backend(BackendSpec("auto"), deployment, EngineCache(tmp_path), trials=1)
    assert selection.backend.name == "torch"
    text = selection.describe()
    assert "fallback: openvino unavailable: BackendUnavailable: openvino: not importable" in text
    assert "pip install 'bonestream[openvino]'" in text


def test_auto_with_a_named_reduced_precision_prefers_what_passed_the_gate(deployment, monkeypatch, tmp_path: Path) -> None:
    """--backend auto --precision fp16: a candidate the gate passed wins over a faster unchecked one (either way round)."""
    monkeypatch.setitem(select.CANDIDATES, "cpu", ("onnxruntime", "torch"))
    cache = EngineCache(tmp_path)
    for passed in ("onnxruntime", "torch"):
        selection = select_backend(BackendSpec("auto", precision="fp16"), deployment, cache, trials=1,
                                   gate=lambda b, passed=passed: None if b.name == passed else "unchecked")
        assert selection.backend.name == passed and set(selection.measured_ms) == {"onnxruntime", "torch"}
