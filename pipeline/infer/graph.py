"""The network every backend runs: preprocessed frames in, bone patch mask and margin out.

Keys never leave the device: the reference's labelling (normalise, distances to centroids, nearest, foreground
lookup, margin) is fused behind the last block's qkv projection, so only h x w bytes and floats come back.
"""

from __future__ import annotations

import torch
from torch import nn

from calibration.labelling import PatchLabeller
from models.vit import DinoViT


class SegmentationGraph(nn.Module):
    def __init__(self, model: DinoViT, labeller: PatchLabeller, stride: int) -> None:
        super().__init__()
        self.model = model
        self.labeller = labeller
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x H x W -> (B x h x w uint8 bone flag, B x h x w float32 margin)."""
        keys = self.model(x, stride=self.stride).keys
        _, foreground, margin = self.labeller(keys)
        return foreground.to(torch.uint8), margin.float()
