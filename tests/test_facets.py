"""Facets read from the product's encoder: block-12 keys and attention are exactly the encoder's, every block's
q/k/v keep the head-fastest layout and the token facet is the block's output. Real frames, random weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from models.encoder import build_encoder
from models.facets import BLOCKS, FACETS, extract_facets
from models.preprocess import Geometry
from models.vit import DinoViT
from models.weights import EMBED_DIM, HEADS


def _planes(ultrabones: Path, resampling: str) -> tuple[Geometry, torch.Tensor]:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((ultrabones / "labelled" / "images").glob("*.png"))[:2]]
    geometry = Geometry.fit(images[0].shape[:2], input_size=(32, 40), resampling=resampling)
    return geometry, torch.from_numpy(geometry.planes(images))


@pytest.mark.parametrize("resampling", ["lanczos", "bilinear-aa"])
def test_block12_key_and_attention_equal_the_encoders_exactly(model: DinoViT, ultrabones: Path, resampling: str) -> None:
    geometry, planes = _planes(ultrabones, resampling)
    encoder = build_encoder(model, geometry, "cpu")
    with torch.no_grad():
        expected = encoder(planes, attention=True)
    out = extract_facets(encoder, planes, BLOCKS, FACETS)
    assert torch.equal(out.facets[12, "key"], expected.keys)
    assert torch.equal(out.attention[12], expected.attention)
    assert set(out.facets) == {(b, f) for b in BLOCKS for f in FACETS} and set(out.attention) == set(BLOCKS)


def test_token_facet_is_the_block_output_and_qkv_keep_the_key_layout(model: DinoViT, ultrabones: Path) -> None:
    geometry, planes = _planes(ultrabones, "area")
    encoder = build_encoder(model, geometry, "cpu")
    gh, gw = geometry.grid
    out = extract_facets(encoder, planes, (5, 11), FACETS)
    with torch.no_grad():
        tokens, _ = encoder.vit.block_input(encoder.input(planes))  # the output of block 11, entering block 12
        block_in = encoder.vit.embed(encoder.input(planes))
        for block in encoder.vit.blocks[:4]:
            block_in = block(block_in)
        qkv = encoder.vit.blocks[4].attn.qkv(encoder.vit.blocks[4].norm1(block_in))  # tokens x (3, heads, head_dim)
    assert torch.equal(out.facets[11, "token"], tokens[:, 1:].reshape(2, gh, gw, EMBED_DIM))
    head_dim = EMBED_DIM // HEADS
    for i, facet in enumerate(("query", "key", "value")):
        part = qkv[:, 1:, i * EMBED_DIM : (i + 1) * EMBED_DIM].reshape(2, gh * gw, HEADS, head_dim)
        expected = part.transpose(2, 3).reshape(2, gh, gw, EMBED_DIM)  # channel-major, head index fastest
        torch.testing.assert_close(out.facets[5, facet], expected, rtol=0, atol=1e-5)
    assert set(out.attention) == {5, 11} and out.attention[5].shape == (2, HEADS, gh, gw)
    sums = out.attention[5].sum(dim=(-1, -2))  # softmax over CLS + patches: the patch part is below 1
    assert torch.all(sums > 0) and torch.all(sums < 1)


def test_only_the_asked_facets_and_known_names(model: DinoViT, ultrabones: Path) -> None:
    geometry, planes = _planes(ultrabones, "area")
    encoder = build_encoder(model, geometry, "cpu")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    out = extract_facets(encoder, planes, (1,), ("token",))
    assert set(out.facets) == {(1, "token")} and set(out.attention) == {1}
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())
    with pytest.raises(ValueError, match="unknown"):
        extract_facets(encoder, planes, (13,), ("key",))
    with pytest.raises(ValueError, match="unknown"):
        extract_facets(encoder, planes, (12,), ("keys",))
