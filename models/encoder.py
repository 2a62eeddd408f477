"""uint8 planes -> last-block keys on one device, with crop, resize and normalisation inside the graph.

``KeyEncoder`` is the one encoder of bonestream: calibration extracts keys and attention with it and every runtime
engine is built from its parts, so the reference's centroids are fitted on exactly the keys the engines compute.
It is built for one geometry, one precision and one device, from a ``DinoViT`` whose weights it copies and never
changes. The ImageNet normalisation of gray replicated to three channels is linear, so it is folded into a
one-channel patch embedding: one uint8 plane crosses to the device instead of three float planes.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from models.placement import build_on
from models.preprocess import DEVICE_RESAMPLING, Geometry
from models.vit import DinoViT, KeyOutput


class ModelInput(nn.Module):
    """B x h x w uint8 planes -> B x 1 x H x W float32 pixels (0..255): crop and antialiased resize when the
    geometry resamples on the device; with a host resampling the plane is already the model input."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.mode = DEVICE_RESAMPLING.get(geometry.resampling)
        self.roi = tuple(geometry.roi)
        self.size = tuple(geometry.input_size)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        x = planes.unsqueeze(1)
        if self.mode is None:
            return x.float()
        top, left, h, w = self.roi
        x = x[:, :, top : top + h, left : left + w].float()
        return F.interpolate(x, size=self.size, mode=self.mode, antialias=True, align_corners=False)


class FoldedPatchEmbed(nn.Module):
    """The patch embedding of gray pixels (0..255) replicated to 3 channels and ImageNet-normalised, as one
    1-channel convolution: W' = sum_c W_c / (255 std_c), b' = b - sum_c (mean_c / std_c) sum W_c. Exact up to
    rounding (the patch has no padding, so every tap sees a real pixel); folded in float64."""

    def __init__(self, conv: nn.Conv2d, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        super().__init__()
        w = conv.weight.detach().to("cpu", torch.float64)
        b = conv.bias.detach().to("cpu", torch.float64)
        m = torch.tensor(mean, dtype=torch.float64, device="cpu")[None, :, None, None]
        s = torch.tensor(std, dtype=torch.float64, device="cpu")[None, :, None, None]
        self.register_buffer("weight", (w / (255.0 * s)).sum(dim=1, keepdim=True).to(device, torch.float32))
        self.register_buffer("bias", (b - (w * (m / s)).sum(dim=(1, 2, 3))).to(device, torch.float32))

    def forward(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=stride).flatten(2).transpose(1, 2)


class EngineLayerNorm(nn.LayerNorm):
    """LayerNorm without per-call casts of its weights. In fp16 it computes in fp32 (fp16 LayerNorm after attention
    overflows: TensorRT issues 2564/3101/4723) with fp32 weights, casting only the activations; in bf16 (fp32's
    exponent range, and torch's kernels accumulate the statistics in fp32) and fp32 it runs natively, its weights cast
    with the rest of the model once, at build. Explicitly typed engines (TensorRT) keep what the graph says."""

    def __init__(self, shape: tuple[int, ...], eps: float, upcast: bool) -> None:
        super().__init__(shape, eps=eps)
        self.upcast = upcast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class FixedGridViT(DinoViT):
    """A DinoViT for one patch grid, stride and dtype, taking gray pixels: positional table precomputed, the
    normalisation folded into the patch embedding, LayerNorm without per-call weight casts (fp32 compute for fp16).
    Built on ``device`` from ``source``'s weights."""

    def __init__(self, source: DinoViT, geometry: Geometry, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        upcast = dtype == torch.float16
        for block in self.blocks:
            block.norm1 = EngineLayerNorm(block.norm1.normalized_shape, block.norm1.eps, upcast)
            block.norm2 = EngineLayerNorm(block.norm2.normalized_shape, block.norm2.eps, upcast)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # on the meta device loading is a no-op, and says so
            self.load_state_dict(source.state_dict(), strict=True)
        for module in self.modules():  # the ViT in ``dtype``; an fp16 model's LayerNorm keeps its fp32 weights
            if not (isinstance(module, EngineLayerNorm) and module.upcast):
                for param in module.parameters(recurse=False):
                    param.data = param.data.to(dtype)
        self.patch_embed = FoldedPatchEmbed(source.patch_embed.proj, geometry.mean, geometry.std, device)  # fp32 pixels in
        self.grid = tuple(geometry.grid)
        self.stride = geometry.stride
        with torch.no_grad():
            self.register_buffer("table", source.position_table(self.grid).detach().to(device, dtype), persistent=False)
        self.dtype = dtype

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) != self.grid:
            raise ValueError(f"this model was built for the patch grid {self.grid}, not {tuple(grid)}")
        return self.table

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the first block: CLS, then the patch embeddings, plus the positional table."""
        tokens = self.patch_embed(x, self.stride).to(self.dtype)
        return torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1) + self.table

    def block_input(self, x: torch.Tensor, stride: int = 8) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens = self.embed(x)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return tokens, self.grid

    def encode(self, pixels: torch.Tensor, attention: bool = False, cls: bool = False) -> KeyOutput:
        """B x 1 x H x W float32 pixels -> float32 keys (B x h x w x 384) and, on request, CLS attention and key."""
        out = self(pixels, stride=self.stride, attention=attention, cls=cls)
        return KeyOutput(*(None if t is None else t.float() for t in (out.keys, out.attention, out.cls_key)))


class KeyEncoder(nn.Module):
    """uint8 planes (``Geometry.plane``) -> keys: ModelInput then FixedGridViT, on one device."""

    def __init__(self, source: DinoViT, geometry: Geometry, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.input = ModelInput(geometry)
        self.vit = FixedGridViT(source, geometry, dtype, device)

    def forward(self, planes: torch.Tensor, attention: bool = False, cls: bool = False) -> KeyOutput:
        return self.vit.encode(self.input(planes), attention, cls)


def build_encoder(source: DinoViT, geometry: Geometry, device: str | torch.device, dtype: torch.dtype = torch.float32) -> KeyEncoder:
    """A KeyEncoder built on ``device`` (``source`` is only read)."""
    return build_on(device, lambda dev: KeyEncoder(source, geometry, dtype, dev))
