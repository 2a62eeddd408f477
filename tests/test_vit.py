"""The ViT returns exactly the last block's keys and CLS attention, for any input size and stride."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.vit import DinoViT, grid_size
from models.weights import EMBED_DIM, HEADS, official_layout, random_state_dict


def test_state_dict_matches_official_layout_key_for_key(model: DinoViT) -> None:
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_layout()


def test_wrong_layout_fails_strict_load() -> None:
    sd = random_state_dict(1)
    sd.pop("blocks.11.attn.qkv.bias")
    with pytest.raises(RuntimeError, match="blocks.11.attn.qkv.bias"):
        DinoViT.from_state_dict(sd)


@pytest.mark.parametrize(("size", "stride", "grid"), [((64, 72), 8, (8, 9)), ((64, 72), 4, (15, 17)), ((224, 224), 8, (28, 28)), ((224, 224), 4, (55, 55))])
def test_grid_sizes(size: tuple[int, int], stride: int, grid: tuple[int, int]) -> None:
    assert grid_size(*size, stride) == grid


@pytest.mark.parametrize("stride", [8, 4])
def test_output_shapes(model: DinoViT, stride: int) -> None:
    x = torch.randn(2, 3, 40, 56)
    out = model(x, stride=stride, attention=True)
    gh, gw = grid_size(40, 56, stride)
    assert out.keys.shape == (2, gh, gw, EMBED_DIM)
    assert out.attention.shape == (2, HEADS, gh, gw)
    # attention rows are softmax over CLS + patches: patch part sums to < 1 and > 0
    sums = out.attention.sum(dim=(-1, -2))
    assert torch.all(sums > 0) and torch.all(sums < 1)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


@pytest.mark.parametrize("stride", [8, 4])
def test_keys_and_attention_equal_independent_computation_from_block_input(model: DinoViT, stride: int) -> None:
    captured = {}
    handle = model.blocks[11].register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    x = torch.randn(1, 3, 48, 64)
    try:
        # run the full block stack once so the hook sees the real input of block 12
        tokens, (gh, gw) = model.block_input(x, stride)
        model.blocks[11](tokens)
        out = model(x, stride=stride, attention=True)
    finally:
        handle.remove()
    block_in = captured["x"].double()
    sd = {k: v.double() for k, v in model.state_dict().items()}
    h = _layer_norm(block_in, sd["blocks.11.norm1.weight"], sd["blocks.11.norm1.bias"])
    qkv = h @ sd["blocks.11.attn.qkv.weight"].T + sd["blocks.11.attn.qkv.bias"]
    q, k = qkv[..., :EMBED_DIM], qkv[..., EMBED_DIM : 2 * EMBED_DIM]
    head_dim = EMBED_DIM // HEADS
    # original extractor layout: per patch, (channel, head) flattened with head fastest
    k_heads = k[0, 1:].reshape(-1, HEADS, head_dim)  # tokens x heads x d (head-major in qkv)
    expected = k_heads.permute(0, 2, 1).reshape(gh, gw, EMBED_DIM)
    torch.testing.assert_close(out.keys[0].double(), expected, rtol=1e-4, atol=1e-4)
    qh = q[0].reshape(-1, HEADS, head_dim).permute(1, 0, 2)
    kh = k[0].reshape(-1, HEADS, head_dim).permute(1, 0, 2)
    att = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(head_dim), dim=-1)[:, 0, 1:]
    torch.testing.assert_close(out.attention[0].double(), att.reshape(HEADS, gh, gw), rtol=1e-4, atol=1e-5)


def test_blocks_match_naive_attention(model: DinoViT) -> None:
    """The fused SDPA path equals explicit softmax attention (guards the fast path)."""
    block = model.blocks[0]
    x = torch.randn(1, 17, EMBED_DIM)
    q, k, v = block.attn.split_qkv(block.norm1(x))
    att = torch.softmax(q @ k.transpose(-1, -2) * block.attn.scale, dim=-1)
    naive = block.attn.proj((att @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(block.attn(block.norm1(x)), naive, rtol=1e-4, atol=1e-5)


def test_position_table_is_dino_interpolation(model: DinoViT) -> None:
    assert model.position_table((28, 28)) is model.pos_embed
    table = model.position_table((55, 55))
    assert table.shape == (1, 1 + 55 * 55, EMBED_DIM)
    torch.testing.assert_close(table[:, 0], model.pos_embed[:, 0])
    grid = model.pos_embed[:, 1:].reshape(1, 28, 28, EMBED_DIM).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(55.1 / 28, 55.1 / 28), mode="bicubic")
    torch.testing.assert_close(table[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, EMBED_DIM))
