"""The network every backend runs: preprocessed frames in, bone patch mask and margin out.

Keys never leave the device: the reference's labelling (normalise, distances to centroids, nearest, foreground
lookup, margin) is fused behind the last block's qkv projection, so only h x w bytes and floats come back.
Engines are built from a graph specialised to one input size and one precision (``SegmentationGraph.specialise``):
the positional table is computed once for the grid, so no bicubic interpolation is traced, and the shape is static.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calibration.labelling import PatchLabeller
from models.vit import DinoViT, grid_size

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = (*DTYPES, "int8")  # int8: linear layers quantised in the ONNX graph (ONNX Runtime on the CPU only)
OUTPUT_NAMES = {"fused": ("mask", "margin"), "keys": ("keys",)}  # what an engine returns, by kind


def check_precision(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {sorted(DTYPES)}")
    return DTYPES[precision]


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activations' type: fp16 LayerNorm after attention overflows
    (TensorRT issues 2564/3101/4723), and explicitly typed engines keep what the graph says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class FixedGridViT(DinoViT):
    """A copy of a DinoViT for one patch grid and one dtype: the positional table is a precomputed buffer."""

    def __init__(self, model: DinoViT, grid: tuple[int, int], dtype: torch.dtype) -> None:
        super().__init__()
        for block in self.blocks:
            block.norm1 = Fp32LayerNorm(block.norm1.normalized_shape, eps=block.norm1.eps)
            block.norm2 = Fp32LayerNorm(block.norm2.normalized_shape, eps=block.norm2.eps)
        self.load_state_dict(model.state_dict(), strict=True)
        self.grid = tuple(grid)
        with torch.no_grad():
            self.register_buffer("table", model.position_table(self.grid).detach().clone(), persistent=False)
        self.to(dtype).eval().requires_grad_(False)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) != self.grid:
            raise ValueError(f"this graph was specialised for the patch grid {self.grid}, not {tuple(grid)}")
        return self.table


class SegmentationGraph(nn.Module):
    def __init__(self, model: DinoViT, labeller: PatchLabeller, stride: int) -> None:
        super().__init__()
        self.model = model
        self.labeller = labeller
        self.stride = stride

    @property
    def dtype(self) -> torch.dtype:
        return self.model.pos_embed.dtype

    def specialise(self, input_size: tuple[int, int], precision: str = "fp32") -> "SegmentationGraph":
        """A copy with a static patch grid and the ViT in ``precision`` (LayerNorm and labelling stay fp32)."""
        grid = grid_size(*input_size, self.stride)
        model = FixedGridViT(self.model, grid, check_precision(precision))
        return SegmentationGraph(model, self.labeller, self.stride).to(self.model.pos_embed.device).eval()

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W float32 -> B x h x w x 384 float32 keys of the last block."""
        return self.model(x.to(self.dtype), stride=self.stride).keys.float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x H x W -> (B x h x w uint8 bone flag, B x h x w float32 margin)."""
        _, foreground, margin = self.labeller(self.keys(x))
        return foreground.to(torch.uint8), margin.float()


class KeysGraph(nn.Module):
    """The same graph stopped at the keys: what the parity gate compares against fp32 torch."""

    def __init__(self, graph: SegmentationGraph) -> None:
        super().__init__()
        self.segmentation = graph  # not "graph": torch.export's GraphModule owns that attribute name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.segmentation.keys(x),)


def engine_module(graph: SegmentationGraph, input_size: tuple[int, int], precision: str, outputs: str) -> nn.Module:
    """What an engine is built from: the graph specialised to one input size and precision, fused or keys-only."""
    if outputs not in OUTPUT_NAMES:
        raise ValueError(f"outputs {outputs!r} is not one of {sorted(OUTPUT_NAMES)}")
    specialised = graph.specialise(input_size, precision)
    return specialised if outputs == "fused" else KeysGraph(specialised)
