"""DINO ViT-S/8 in the official checkpoint's layout, cut short for dense key extraction.

Parameter names equal the keys of ``dino_deitsmall8_pretrain.pth`` so the official file loads with
``strict=True``. The forward pass stops after the last block's qkv projection: bone segmentation needs the
12th block's keys (and, at calibration only, its CLS-to-patch attention), never its MLP or the final norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from models.weights import DEPTH, EMBED_DIM, HEADS, PATCH, PRETRAINED_GRID


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as B x heads x tokens x head_dim (the checkpoint stacks them q, k, v)."""
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        # Overlapping patches (stride < patch) reuse the same 8x8 kernel, as in the original co-segmentation.
        return F.conv2d(x, self.proj.weight, self.proj.bias, stride=stride).flatten(2).transpose(1, 2)


@dataclass
class KeyOutput:
    """keys: B x h x w x 384 (head index fastest, as in the original extractor);
    attention: B x heads x h x w CLS-to-patch attention of the last block, or None;
    cls_key: B x 384 key of the CLS token (same layout), the frame descriptor of outlier removal, or None."""

    keys: torch.Tensor
    attention: torch.Tensor | None
    cls_key: torch.Tensor | None = None


def patch_descriptors(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B x heads x tokens x head_dim (CLS first) -> B x h x w x 384 patch descriptors, head index fastest."""
    return x[:, :, 1:].permute(0, 2, 3, 1).reshape(x.shape[0], grid[0], grid[1], EMBED_DIM)


def cls_attention(q: torch.Tensor, k: torch.Tensor, scale: float, grid: tuple[int, int]) -> torch.Tensor:
    """B x heads x h x w CLS-to-patch attention: only the CLS query row is needed (softmax over all tokens, CLS
    included, then the patch columns kept)."""
    logits = torch.einsum("bhd,bhtd->bht", q[:, :, 0], k) * scale
    return logits.softmax(dim=-1)[:, :, 1:].reshape(q.shape[0], HEADS, grid[0], grid[1])


def grid_size(height: int, width: int, stride: int, patch: int = PATCH) -> tuple[int, int]:
    """Patch grid of a height x width input: 1 + (side - patch) // stride per axis."""
    if stride <= 0 or patch % stride:
        raise ValueError(f"stride {stride} must divide the patch size {patch}")
    if height < patch or width < patch:
        raise ValueError(f"input {height}x{width} is smaller than one {patch}x{patch} patch")
    return 1 + (height - patch) // stride, 1 + (width - patch) // stride


class DinoViT(nn.Module):
    """ViT-S/8 backbone (12 pre-norm blocks, 6 heads x 64, no head) returning last-block keys."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(EMBED_DIM, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + PRETRAINED_GRID**2, EMBED_DIM))
        self.blocks = nn.ModuleList(Block(EMBED_DIM, HEADS) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(EMBED_DIM, eps=1e-6)  # unused by the key path; kept so the checkpoint loads strictly

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "DinoViT":
        model = cls()
        model.load_state_dict(state_dict, strict=True)
        return model.eval().requires_grad_(False)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embedding for a patch grid, interpolated bicubically as DINO does.

        The +0.1 and the scale-factor form (not an output size) reproduce DINO's interpolation exactly,
        so descriptors match the reference implementation for any input size and stride.
        """
        gh, gw = grid
        if (gh, gw) == (PRETRAINED_GRID, PRETRAINED_GRID):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        n = PRETRAINED_GRID
        patch_pos = F.interpolate(
            patch_pos.reshape(1, n, n, EMBED_DIM).permute(0, 3, 1, 2),
            scale_factor=((gh + 0.1) / n, (gw + 0.1) / n),
            mode="bicubic",
        )
        if patch_pos.shape[-2:] != (gh, gw):
            raise RuntimeError(f"positional grid interpolation gave {tuple(patch_pos.shape[-2:])}, wanted {grid}")
        return torch.cat((cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, EMBED_DIM)), dim=1)

    def block_input(self, x: torch.Tensor, stride: int = PATCH) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the last block, and the patch grid."""
        grid = grid_size(x.shape[-2], x.shape[-1], stride)
        tokens = self.patch_embed(x, stride)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.position_table(grid)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return tokens, grid

    def forward(self, x: torch.Tensor, stride: int = PATCH, attention: bool = False, cls: bool = False) -> KeyOutput:
        """Last-block keys for a batch of preprocessed B x 3 x H x W images (CLS attention and CLS key on request)."""
        tokens, (gh, gw) = self.block_input(x, stride)
        last = self.blocks[-1]
        q, k, _ = last.attn.split_qkv(last.norm1(tokens))
        keys = patch_descriptors(k, (gh, gw))
        cls_key = k[:, :, 0].transpose(1, 2).reshape(x.shape[0], EMBED_DIM) if cls else None
        return KeyOutput(keys, cls_attention(q, k, last.attn.scale, (gh, gw)) if attention else None, cls_key)
