"""The TensorRT backend up to the TensorRT call, on the CPU: the exported core is one static, float32-in graph with no
uint8 anywhere, matches the eager core, keeps LayerNorm in fp32 in fp16 (native in bf16); the fallback check names the
ops left to torch; without CUDA or torch-tensorrt the backend refuses with the reason."""

from __future__ import annotations

import importlib.util
import operator

import numpy as np
import pytest
import torch
from torch import nn

from models.preprocess import Geometry
from pipeline.infer.backend import BackendUnavailable
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import DTYPES, engine_module
from pipeline.infer.tensorrt_backend import TensorRTBackend, export_core, import_torch_tensorrt, refusal, torch_fallbacks

LAYER_NORMS = ("aten.layer_norm.default", "aten.native_layer_norm.default")


@pytest.fixture(scope="module")
def deployment(model) -> Deployment:
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((4, 384)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    geometry = Geometry.fit((40, 48), input_size=(32, 40), resampling="area")
    return Deployment(model, geometry, centroids, (0, 2), "random:0", "test-reference")


def tensor_values(node: torch.fx.Node) -> list[torch.Tensor]:
    val = node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else [val]
    return [v for v in vals if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_exported_core_is_static_float_and_matches_eager(deployment, precision) -> None:
    exported = export_core(deployment, precision, "fused", "cpu")
    # Static shapes, float32 pixels in.
    (pixels,) = [n for n in exported.graph.nodes if n.op == "placeholder" and n.name in exported.graph_signature.user_inputs]
    assert pixels.meta["val"].dtype == torch.float32
    assert tuple(pixels.meta["val"].shape) == deployment.pixel_shape(1)
    for node in exported.graph.nodes:
        for val in tensor_values(node):
            assert all(isinstance(d, int) for d in val.shape), f"symbolic dim in {node.name}: {val.shape}"
    # No uint8 anywhere, also after decomposition to core ATen (what TensorRT's lowering starts from).
    for graph in (exported.graph, exported.run_decompositions().graph):
        uint8 = [n.name for n in graph.nodes for v in tensor_values(n) if v.dtype == torch.uint8]
        assert not uint8, f"uint8 in the TensorRT graph: {uint8}"
    # The ViT runs in the requested precision; LayerNorm on fp32 inputs for fp32 and fp16 (fp16 LayerNorm overflows),
    # natively in bf16 (fp32's exponent range: no overflow; no cast kernels per block).
    linears = [n for n in exported.graph.nodes if str(n.target) == "aten.linear.default"]
    assert linears and {n.meta["val"].dtype for n in linears} == {DTYPES[precision]}
    norms = [n for n in exported.graph.nodes if str(n.target) in LAYER_NORMS]
    norm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert norms and all(n.args[0].meta["val"].dtype == norm_dtype for n in norms)
    # Same outputs as the eager core (the bool flag becomes the uint8 mask after the engine).
    pixels_in = torch.randint(0, 256, deployment.pixel_shape(1), generator=torch.Generator().manual_seed(1)).float()
    with torch.inference_mode():
        flag, margin = exported.module()(pixels_in)
        mask, expected_margin = engine_module(deployment, precision, "fused", "cpu").core(pixels_in)
    assert flag.dtype == torch.bool and margin.dtype == torch.float32
    torch.testing.assert_close(flag.to(torch.uint8), mask, atol=0, rtol=0)
    torch.testing.assert_close(margin, expected_margin, atol=1e-4, rtol=1e-4)


def test_keys_core_exports_without_uint8(deployment) -> None:
    exported = export_core(deployment, "fp32", "keys", "cpu")
    assert not [n.name for n in exported.graph.nodes for v in tensor_values(n) if v.dtype == torch.uint8]
    pixels_in = torch.full(deployment.pixel_shape(1), 128.0)
    with torch.inference_mode():
        (keys,) = exported.module()(pixels_in)
        (expected,) = engine_module(deployment, "fp32", "keys", "cpu").core(pixels_in)
    torch.testing.assert_close(keys, expected)


class FakeEngine(nn.Module):
    """Stands in for a TorchTensorRTModule in the partitioned graph."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)


class TorchPart(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.sigmoid.default(x)


def partitioned(with_torch_part: bool) -> torch.fx.GraphModule:
    """engine -> getitem (-> a torch submodule), as torch-tensorrt's partitioner lays a compiled graph out."""
    root = nn.Module()
    root.add_module("_run_on_acc_0", FakeEngine())
    root.add_module("_run_on_gpu_1", torch.fx.symbolic_trace(TorchPart()))
    graph = torch.fx.Graph()
    out = graph.call_function(operator.getitem, (graph.call_module("_run_on_acc_0", (graph.placeholder("x"),)), 0))
    graph.output(graph.call_module("_run_on_gpu_1", (out,)) if with_torch_part else out)
    return torch.fx.GraphModule(root, graph)


def test_fallback_check_names_ops_left_to_torch(deployment) -> None:
    is_engine = lambda _, module: isinstance(module, FakeEngine)  # noqa: E731
    assert torch_fallbacks(partitioned(False), is_engine) == ([], 1)
    assert torch_fallbacks(partitioned(True), is_engine) == (["aten.sigmoid.default"], 1)
    # No engine at all (torch-tensorrt 2.11 returns the torch graph when nothing converts): every op is named.
    ops, engines = torch_fallbacks(export_core(deployment, "fp32", "fused", "cpu").module(), is_engine)
    assert engines == 0 and "aten.scaled_dot_product_attention.default" in ops and "aten.argmin.default" in ops
    message = refusal(ops, engines)
    assert message.startswith("tensorrt: ") and "0 engines" in message and "more" in message


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None, reason="torch-tensorrt is installed here")
def test_import_torch_tensorrt_refuses_when_missing() -> None:
    with pytest.raises(BackendUnavailable, match="torch-tensorrt is not importable"):
        import_torch_tensorrt()


def test_backend_refuses_the_cpu(deployment, tmp_path) -> None:
    with pytest.raises(BackendUnavailable, match="CUDA devices only"):
        TensorRTBackend(deployment, "cpu", "fp32", 1, "fused", EngineCache(tmp_path))
