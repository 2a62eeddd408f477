"""int8 linear layers for ONNX Runtime on the CPU.

ONNX Runtime's dynamic quantisation turns the ViT's linear layers (qkv, proj, fc1, fc2: three quarters of its
FLOPs) into int8 matrix products with int8 weights per output channel and uint8 activations scaled per call.
Everything else stays fp32: attention products, softmax, LayerNorm, GELU and the whole labelling. Without VNNI
(plain AVX2) int8 products go through 16-bit accumulators that saturate, so weights are quantised to 7 bits
(``reduce_range``); with VNNI or AMX-INT8 the full 8 bits are used, which halves the rounding error. The parity
gate judges the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx


def linear_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes the exporter made from ``aten.linear`` (the ViT's nn.Linear layers, weights constant)."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and any(p.key == "pkg.torch.onnx.fx_node" and "aten.linear" in p.value for p in node.metadata_props)
    ]


class _NoStaticHint(logging.Filter):
    """The quantiser advises shape pre-processing on the root logger; that is for static quantisation, not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_linear_layers(source: str | Path, target: str | Path, reduce_range: bool) -> None:
    """Write ``source`` (an fp32 export) with its linear layers in dynamic int8 to ``target``, checked;
    ``reduce_range`` (7-bit weights) for CPUs without VNNI."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional; the ONNX backend checked it is there

    nodes = linear_matmuls(onnx.load(str(source), load_external_data=False))
    if not nodes:
        raise ValueError(f"{source}: no linear-layer MatMul found (exporter metadata missing); cannot quantise")
    hint = _NoStaticHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
            per_channel=True, reduce_range=reduce_range,
        )
    finally:
        logging.getLogger().removeFilter(hint)
    onnx.checker.check_model(str(target), full_check=True)
