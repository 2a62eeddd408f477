"""ONNX export of the fused graph: checker, ONNX Runtime on the CPU against torch, the parity gate, `bonestream export`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from calibration.calibrate import CalibrationSettings, calibrate
from calibration.clustering import KMeansSettings
from calibration.reference import Reference
from models.encoder import EngineLayerNorm
from models.preprocess import Geometry
from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.cli import main
from pipeline.infer.backend import BackendUnavailable, TorchBackend
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.export import OPSET, cached_onnx
from pipeline.infer.graph import OUTPUT_NAMES, engine_module
from pipeline.infer.parity import ParityThresholds, check_parity, record_verdict
from pipeline.infer.select import BackendSpec, make_backend, select_backend

PHANTOM = "phantom:12"  # the source spec the reference is calibrated on (frames found by name by `export`)
BATCH = 2
ORT = BackendSpec("onnxruntime", batch=BATCH)
KEYS = BackendSpec("onnxruntime", batch=BATCH, outputs="keys")


@pytest.fixture(scope="module")
def reference(model, random_identity) -> Reference:
    frames = list(PhantomSource(PhantomConfig(n_frames=12)))[::4]
    geometry = Geometry.fit(frames[0].image.shape, input_size=(64, 80))
    settings = CalibrationSettings(kmeans=KMeansSettings(k=4, sample_interval=3))
    ref = calibrate(model, random_identity, geometry, [f.image for f in frames], [f.name for f in frames], settings, progress=False)
    return replace(ref, foreground=(0, 2))  # random weights vote arbitrarily: fix a mixed bone/background split


@pytest.fixture(scope="module")
def deployment(model, random_identity, reference) -> Deployment:
    return Deployment.from_reference(model, random_identity.label, reference)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def frames(reference) -> np.ndarray:
    images = {f.name: f.image for f in PhantomSource(PhantomConfig(n_frames=12))}
    return reference.geometry.planes([images[n] for n in reference.frames])


def test_onnx_graphs_pass_the_checker_with_static_shapes(deployment, cache) -> None:
    for outputs in ("fused", "keys"):
        path, _ = cached_onnx(deployment, batch=BATCH, precision="fp32", outputs=outputs, cache=cache)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 17
        assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES[outputs])
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [BATCH, 1, 64, 80]  # static, one gray plane: no symbolic dimension
        ops = {n.op_type for n in model.graph.node}
        assert "LayerNormalization" in ops and "Resize" not in ops  # native LayerNorm; positional table precomputed


def test_onnxruntime_cpu_matches_torch_keys_and_labels(deployment, cache, frames) -> None:
    torch_keys = TorchBackend(deployment, batch=BATCH, outputs="keys").run(frames)[0]
    ort_keys = make_backend(KEYS, deployment, cache).run(frames)[0]
    np.testing.assert_allclose(ort_keys, torch_keys, atol=1e-4, rtol=1e-4)
    torch_mask, torch_margin = TorchBackend(deployment, batch=BATCH)(frames)
    ort = make_backend(ORT, deployment, cache)
    mask, margin = ort(frames)
    assert mask.dtype == np.uint8 and margin.dtype == np.float32 and mask.shape == (len(frames), 8, 10)
    np.testing.assert_array_equal(mask, torch_mask)
    np.testing.assert_allclose(margin, torch_margin, atol=1e-4)
    assert 0 < mask.mean() < 1  # both bone and background present: the comparison means something
    assert set(ort.last_timings_ms) == {"host_to_device", "model_labelling", "device_to_host"}


def test_fused_labelling_equals_the_reference_labelling(deployment, reference, frames) -> None:
    """The fused engine (uint8 in, folded normalisation, precomputed positions, fp32 LayerNorm) reproduces the
    calibration labels on the calibration frames through the reference's own PatchLabeller."""
    engine = engine_module(deployment, "fp32", "fused", "cpu")
    keys_engine = engine_module(deployment, "fp32", "keys", "cpu")
    with torch.inference_mode():
        planes = torch.from_numpy(frames)
        labels, foreground, margin = reference.labeller()(keys_engine(planes)[0])
        fused_mask, fused_margin = engine(planes)
    np.testing.assert_array_equal(labels.numpy(), reference.calibration_labels)
    np.testing.assert_array_equal(fused_mask.numpy(), foreground.numpy().astype(np.uint8))
    torch.testing.assert_close(fused_margin, margin, atol=1e-5, rtol=1e-5)


def test_reduced_precision_layernorm_casts_nothing_per_call_and_labelling_stays_fp32(deployment, frames) -> None:
    """bf16: native LayerNorm (weights cast once at build; torch accumulates its statistics in fp32); fp16: fp32
    LayerNorm weights (its compute stays fp32: the fp16 overflow), only activations cast."""
    assert engine_module(deployment, "fp16", "fused", "cpu").core.vit.blocks[3].norm1.weight.dtype == torch.float32
    engine = engine_module(deployment, "bf16", "fused", "cpu")
    vit = engine.core.vit
    assert vit.blocks[3].attn.qkv.weight.dtype == torch.bfloat16 and isinstance(vit.blocks[3].norm1, EngineLayerNorm)
    assert vit.blocks[3].norm1.weight.dtype == torch.bfloat16 and not vit.blocks[3].norm1.upcast
    block_input = torch.randn(1, 5, 384, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(  # the same statistics as fp32 LayerNorm, to bf16's rounding
            vit.blocks[3].norm1(block_input).float(),
            torch.nn.functional.layer_norm(block_input.float(), (384,), vit.blocks[3].norm1.weight.float(), vit.blocks[3].norm1.bias.float()),
            atol=0.05, rtol=0.02,
        )
    assert engine.core.labeller.centroids.dtype == torch.float32
    with torch.inference_mode():
        assert engine_module(deployment, "bf16", "keys", "cpu")(torch.from_numpy(frames))[0].dtype == torch.float32
    with pytest.raises(ValueError, match="built for the patch grid"):
        vit.position_table((9, 10))


def test_parity_gate_passes_fp32_and_refuses_a_degraded_engine(deployment, cache, frames, reference) -> None:
    ort = make_backend(ORT, deployment, cache)
    ort_keys = make_backend(KEYS, deployment, cache)
    good = check_parity(ort, ort_keys, deployment, frames, calibration_labels=reference.calibration_labels)
    assert good.passed and good.key_cosine > 0.9999 and good.label_agreement == good.mask_agreement == 1.0
    # a "degraded engine": the same graph with perturbed weights in its last block
    degraded = type(deployment.model).from_state_dict(deployment.model.state_dict())
    with torch.no_grad():
        degraded.blocks[-1].attn.qkv.weight.mul_(-0.3).add_(0.05)
    broken = replace(deployment, model=degraded)
    bad = check_parity(TorchBackend(broken, batch=BATCH), TorchBackend(broken, batch=BATCH, outputs="keys"), deployment, frames)
    assert not bad.passed and "REFUSED" in bad.describe() and "key cosine" in bad.describe()
    strict = check_parity(ort, ort_keys, deployment, frames, thresholds=ParityThresholds(key_cosine=1.01))
    assert not strict.passed
    record_verdict(cache, deployment, ort, strict)  # a refusal sticks: run time refuses the engine too
    with pytest.raises(BackendUnavailable, match="refused by the parity gate"):
        select_backend(ORT, deployment, cache)
    record_verdict(cache, deployment, ort, good)
    assert select_backend(ORT, deployment, cache).backend.name == "onnxruntime"


def test_int8_quantises_only_the_linear_layers_and_passes_the_gate(deployment, cache, frames, reference) -> None:
    path, _ = cached_onnx(deployment, batch=BATCH, precision="int8", outputs="fused", cache=cache)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulInteger") == 12 * 4 - 3  # qkv, proj, fc1, fc2; last block qkv only
    assert ops.count("MatMul") == 11 * 2 + 1  # attention products and the labelling stay fp32
    int8 = replace(ORT, precision="int8")
    result = check_parity(make_backend(int8, deployment, cache), make_backend(replace(int8, outputs="keys"), deployment, cache),
                          deployment, frames, calibration_labels=reference.calibration_labels)
    assert result.passed and result.key_cosine > 0.99, result.describe()


def test_parity_gate_needs_the_calibration_frames(deployment, cache, frames, reference) -> None:
    ort = make_backend(ORT, deployment, cache)
    ort_keys = make_backend(KEYS, deployment, cache)
    with pytest.raises(Exception, match="not the reference's calibration frames"):
        check_parity(ort, ort_keys, deployment, frames[::-1].copy(), calibration_labels=reference.calibration_labels)


def test_export_command_builds_and_gates(reference, cache, tmp_path: Path, capsys) -> None:
    ref_path = tmp_path / "ref.json"
    reference.save(ref_path)
    args = ["export", PHANTOM, "--reference", str(ref_path), "--weights", "random:0", "--cache-dir", str(cache.root), "--no-progress"]
    assert main([*args, "--batch-size", str(BATCH)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime fp32: parity passed on 3 calibration frames" in out
    assert main([*args, "--min-cosine", "1.01", "--batch-size", str(BATCH)]) == 1
    assert "REFUSED" in capsys.readouterr().out
    assert main(["export", "phantom:2", *args[2:]]) == 2
    assert "calibration frames are not in the sources" in capsys.readouterr().err


def test_run_gate_uses_the_recorded_verdict_or_checks_on_the_calibration_frames(deployment, cache, frames, reference) -> None:
    """fp16/bf16 engines label no frame before passing the parity gate: a recorded refusal stops them with the figures,
    a recorded pass lets them run, neither and no frames is 'unchecked'; with frames the check runs and is recorded."""
    from pipeline.infer.gate import ParityRefused, ParityUnchecked, gate
    from pipeline.infer.parity import ParityResult, recorded_verdict

    assert gate(TorchBackend(deployment, batch=BATCH), deployment, cache, None, reference.calibration_labels) is None  # fp32
    bf16 = TorchBackend(deployment, precision="bf16", batch=BATCH)
    fresh = EngineCache(cache.root / "fresh")
    with pytest.raises(ParityUnchecked, match="--calibration-sources"):
        gate(bf16, deployment, fresh, None, reference.calibration_labels)
    record_verdict(fresh, deployment, bf16, ParityResult("torch", "bf16", 3, 0.5, 0.4, 0.3))
    with pytest.raises(ParityRefused, match=r"torch bf16: parity REFUSED on 3 calibration frames: key cosine 0.5000"):
        gate(bf16, deployment, fresh, None, reference.calibration_labels)
    record_verdict(fresh, deployment, bf16, ParityResult("torch", "bf16", 3, 0.999, 1.0, 1.0))
    assert gate(bf16, deployment, fresh, None, reference.calibration_labels).passed
    checked = EngineCache(cache.root / "checked")
    try:
        result = gate(bf16, deployment, checked, frames, reference.calibration_labels)
        assert result.passed and result.frames == len(reference.frames)
    except ParityRefused:
        pass  # random weights in bf16 may differ: refused with the figures is the gate working too
    assert recorded_verdict(checked, deployment, bf16) is not None


def test_default_cuda_precision_falls_back_to_fp32_when_unchecked(deployment, reference, tmp_path: Path, capsys) -> None:
    """bf16 is CUDA's default only once it has passed the gate; asked for explicitly, unchecked is an error. (The
    engines are CPU ones here: the logic is the device's name, the gate is the same.)"""
    from argparse import Namespace

    from pipeline.commands.common import gated
    from pipeline.infer.gate import ParityUnchecked

    asked = []

    def build(precision: str, gate) -> list[TorchBackend]:
        asked.append(precision)
        return [TorchBackend(deployment, precision=precision)]

    cache_dir = str(tmp_path / "engines")
    assert gated(Namespace(precision=None, device="cuda", calibration_sources=None, cache_dir=cache_dir), reference, build) == "fp32"
    assert asked == ["bf16", "fp32"] and "running fp32 instead" in capsys.readouterr().out
    with pytest.raises(ParityUnchecked):
        gated(Namespace(precision="bf16", device="cuda", calibration_sources=None, cache_dir=cache_dir), reference, build)
    assert gated(Namespace(precision=None, device="cpu", calibration_sources=None, cache_dir=cache_dir), reference, build) == "fp32"


def test_auto_precision_is_handed_the_runs_gate(deployment, reference, tmp_path: Path) -> None:
    """--precision auto: the build gets the same gate as an explicit precision, so auto keeps no unchecked engine."""
    from argparse import Namespace

    from pipeline.commands.common import gated

    refusals = []

    def build(precision: str, gate) -> list[TorchBackend]:
        refusals.append((precision, gate(TorchBackend(deployment, precision="bf16")), gate(TorchBackend(deployment))))
        return [TorchBackend(deployment)]

    args = Namespace(precision="auto", device="cpu", calibration_sources=None, cache_dir=str(tmp_path / "engines"))
    assert gated(args, reference, build) == "fp32"  # the precision its engines run in
    (precision, bf16, fp32), = refusals
    assert precision == "auto" and "torch bf16 on cpu (batch 1) has not passed the parity gate" in bf16 and fp32 is None


def test_segment_in_bf16_passes_the_gate_before_its_first_frame(reference, tmp_path: Path, capsys, monkeypatch) -> None:
    """Unchecked bf16 asked for explicitly stops before any frame, in one line; with the calibration sources it is
    checked (verdict printed with its figures and recorded) and then labels, or is refused with the figures."""
    monkeypatch.setenv("BONESTREAM_CACHE", str(tmp_path / "cache"))
    ref_path = tmp_path / "ref.json"
    reference.save(ref_path)
    args = ["segment", "phantom:2", "--reference", str(ref_path), "--weights", "random:0", "--precision", "bf16", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "unchecked")]) == 2
    assert "has not passed the parity gate" in capsys.readouterr().err
    assert not (tmp_path / "unchecked" / "masks").exists()
    code = main([*args, "--out", str(tmp_path / "checked"), "--calibration-sources", PHANTOM])
    out, err = capsys.readouterr()
    if code == 0:
        assert "torch bf16: parity passed on 3 calibration frames" in out
    else:  # random weights in bf16 may differ: refused with the figures is the gate working too
        assert code == 2 and "torch bf16: parity REFUSED" in err
