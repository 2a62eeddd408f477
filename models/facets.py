"""Every block's query, key, value and token facets and CLS attention, from the product's own encoder.

The study looks inside the ViT: which block and which facet separates bone. Reading them from the encoder the
engines are built from (``models.encoder.build_encoder``) means the analysed block-12 keys are the very keys
calibration clusters. The encoder's parts are walked block by block, without hooks and without changing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from models.architecture import BLOCKS, EMBED_DIM, FACETS
from models.encoder import KeyEncoder
from models.vit import cls_attention, patch_descriptors


@dataclass
class FacetOutput:
    """facets: (block, facet) -> B x h x w x 384 float32 (q, k, v head index fastest, as the encoder's keys);
    attention: block -> B x heads x h x w float32 CLS-to-patch attention."""

    facets: dict[tuple[int, str], torch.Tensor]
    attention: dict[int, torch.Tensor]


@torch.no_grad()
def extract_facets(encoder: KeyEncoder, planes: torch.Tensor, blocks: Sequence[int], facets: Sequence[str]) -> FacetOutput:
    """Facets of ``blocks`` (1-12) for a batch of uint8 planes on the encoder's device; stops after the last
    block asked for. q, k and v are recomputed from the block's input next to the block's own call, so the token
    facet is exactly what the block returns."""
    unknown = sorted(set(facets) - set(FACETS)) + sorted(set(blocks) - set(BLOCKS), key=str)
    if unknown:
        raise ValueError(f"unknown blocks or facets {unknown}; blocks are {BLOCKS[0]}-{BLOCKS[-1]}, facets {FACETS}")
    vit = encoder.vit
    grid = vit.grid
    tokens = vit.embed(encoder.input(planes))
    out = FacetOutput({}, {})
    for number, block in enumerate(vit.blocks[: max(blocks)], start=1):
        if number in blocks:
            q, k, v = block.attn.split_qkv(block.norm1(tokens))
            for name, x in (("query", q), ("key", k), ("value", v)):
                if name in facets:
                    out.facets[number, name] = patch_descriptors(x, grid).float()
            out.attention[number] = cls_attention(q, k, block.attn.scale, grid).float()
        tokens = block(tokens)
        if number in blocks and "token" in facets:
            out.facets[number, "token"] = tokens[:, 1:].reshape(tokens.shape[0], *grid, EMBED_DIM).float()
    return out
