"""The DINO projection head: what the student and teacher are compared through, dropped after training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.weights import EMBED_DIM


@dataclass(frozen=True)
class HeadSettings:
    """DINO's defaults (Caron et al. 2021): 3-layer MLP 2048 wide, 256 bottleneck, 65536 prototypes."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes with unit norm (DINO's ``norm_last_layer``).

    The last layer is kept as its direction ``last_v`` only and normalised in the forward pass: that is weight
    normalisation with the gain fixed at 1, which DINO found stabilises training."""

    def __init__(self, settings: HeadSettings, in_dim: int = EMBED_DIM) -> None:
        super().__init__()
        s = settings
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, s.hidden_dim), nn.GELU(),
            nn.Linear(s.hidden_dim, s.hidden_dim), nn.GELU(),
            nn.Linear(s.hidden_dim, s.bottleneck_dim),
        )
        self.last_v = nn.Parameter(torch.empty(s.out_dim, s.bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.last_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.last_v, dim=-1).t()
