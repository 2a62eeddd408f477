"""The network every backend runs: uint8 planes in, bone patch mask and margin out.

Keys never leave the device: the reference's labelling (normalise, distances to centroids, nearest, foreground
lookup, margin) is fused behind the last block's qkv projection, so only h x w bytes and floats come back.
An engine is two parts: ``ModelInput`` (uint8 -> float pixels: cast, and crop + resize for a device resampling)
and ``CoreGraph`` (float pixels -> outputs). torch runs both as one module; ONNX and TensorRT compile the core
alone (TensorRT takes no uint8 casts inside an engine) and torch runs the input step on the device in front of it.
Every engine is built fresh on its device by ``engine_module``: no two engines share a tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from calibration.labelling import PatchLabeller
from models.encoder import FixedGridViT, ModelInput
from models.placement import build_on
from pipeline.choices import FLOAT_PRECISIONS
from pipeline.infer.deployment import Deployment

DTYPES = dict(zip(FLOAT_PRECISIONS, (torch.float32, torch.float16, torch.bfloat16), strict=True))
OUTPUT_NAMES = {"fused": ("mask", "margin"), "keys": ("keys",)}  # what an engine returns, by kind



def check_precision(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {sorted(DTYPES)}")
    return DTYPES[precision]


class CoreGraph(nn.Module):
    """B x 1 x H x W float32 pixels -> (B x h x w uint8 bone flag, B x h x w float32 margin), or (keys,) without a
    labeller. The ViT runs in its dtype (LayerNorm in fp32 for fp16); the labelling stays fp32."""

    def __init__(self, vit: FixedGridViT, labeller: PatchLabeller | None) -> None:
        super().__init__()
        self.vit = vit
        self.labeller = labeller

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keys = self.vit.encode(pixels).keys
        return (keys,) if self.labeller is None else fused_outputs(self.labeller, keys)


def fused_outputs(labeller: PatchLabeller, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 keys -> (bone flag as uint8, margin): the labelling every fused engine ends with."""
    _, foreground, margin = labeller(keys)
    return foreground.to(torch.uint8), margin


class EngineGraph(nn.Module):
    """uint8 planes -> the core's outputs: what the torch backend runs (and captures) as one graph."""

    def __init__(self, model_input: ModelInput, core: CoreGraph) -> None:
        super().__init__()
        self.input = model_input
        self.core = core

    def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.core(self.input(planes))


def engine_module(deployment: Deployment, precision: str, outputs: str, device: str | torch.device) -> EngineGraph:
    """A new engine graph on ``device``: the deployment's weights and centroids copied there, the ViT in ``precision``."""
    if outputs not in OUTPUT_NAMES:
        raise ValueError(f"outputs {outputs!r} is not one of {sorted(OUTPUT_NAMES)}")
    dtype = check_precision(precision)

    def build(dev: torch.device) -> EngineGraph:
        vit = FixedGridViT(deployment.model, deployment.geometry, dtype, dev)
        labeller = deployment.labeller(dev) if outputs == "fused" else None
        return EngineGraph(ModelInput(deployment.geometry), CoreGraph(vit, labeller))

    return build_on(device, build)


def model_input(deployment: Deployment, device: str | torch.device) -> ModelInput:
    """The input step alone, for engines that compile only the core."""
    return build_on(device, lambda _: ModelInput(deployment.geometry))
