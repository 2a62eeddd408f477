"""ONNX export of the fused core (float pixels -> mask, margin) and of its keys-only twin (pixels -> keys).

Static shapes per geometry and batch, the positional table precomputed for the grid, opset >= 17 so LayerNorm
is one native LayerNormalization node (its statistics in fp32 whatever the input type). The dynamo exporter
traces the graph without hooks; the last block stops at its qkv projection, as in torch.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from pipeline.infer.cache import EngineCache
from pipeline.infer.cpu_features import cpu_features
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import OUTPUT_NAMES, engine_module
from pipeline.infer.quantize import quantize_linear_layers

OPSET = 18
INPUT_NAME = "frames"


def export_onnx(module: nn.Module, shape: tuple[int, ...], path: str | Path, output_names: tuple[str, ...], opset: int = OPSET) -> None:
    """Write ``module`` (on the CPU, float32 ``shape`` in) as one self-contained ONNX file and run the ONNX checker on it."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17 has no native LayerNormalization; fp16 engines need it")
    quiet = logging.getLogger("torch.onnx")  # the exporter logs every optional op library it does not find
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation notices, not ours to act on
            torch.onnx.export(
                module, (torch.zeros(shape),), str(path), input_names=[INPUT_NAME], output_names=list(output_names),
                opset_version=opset, dynamo=True, external_data=False, verbose=False,
            )
    finally:
        quiet.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)


def cached_onnx(deployment: Deployment, *, batch: int, precision: str, outputs: str, cache: EngineCache) -> tuple[Path, bool]:
    """The deployment's ONNX file for one batch size, precision and output kind (exported on a cache miss).

    int8 is the fp32 export with its linear layers quantised (see quantize.py), to 7 bits on CPUs without VNNI.
    """
    reduce_range = precision == "int8" and not cpu_features().vnni
    key = deployment.key("onnx-7bit" if reduce_range else "onnx", outputs=outputs, batch=batch, precision=precision, device="cpu")
    if precision == "int8":
        source, _ = cached_onnx(deployment, batch=batch, precision="fp32", outputs=outputs, cache=cache)
        return cache.fetch(key, ".onnx", lambda path: quantize_linear_layers(source, path, reduce_range))

    def build(path: Path) -> None:
        core = engine_module(deployment, precision, outputs, "cpu").core
        export_onnx(core, deployment.pixel_shape(batch), path, OUTPUT_NAMES[outputs])

    return cache.fetch(key, ".onnx", build)
