"""What every engine is built from: the loaded model, one calibration's geometry and centroids, and their identities.

A deployment is read-only: engines copy what they need from it onto their own device (``graph.engine_module``),
so the model it holds stays where it was loaded, in fp32, whatever engines are built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from calibration.labelling import PatchLabeller
from calibration.reference import Reference
from models.preprocess import Geometry
from models.vit import DinoViT
from pipeline.infer.cache import EngineKey, device_identity, library_versions

# The compiled core's interface (input: float32 gray pixels B x 1 x H x W; its outputs), in every engine's cache key:
# bumped whenever it or what an engine computes changes, so an engine (or a parity verdict) of another version is
# rebuilt, never reused. 3: bf16 LayerNorm native, int8 weights 8-bit with VNNI.
ENGINE_FORMAT = 3


@dataclass(frozen=True)
class Deployment:
    """The fp32 model, the geometry and the reference's centroids and bone clusters, and whose they are."""

    model: DinoViT
    geometry: Geometry
    centroids: np.ndarray  # k x 384 float32
    foreground: tuple[int, ...]  # bone cluster ids
    weights: str  # WeightsIdentity.label
    reference: str  # Reference.id

    @classmethod
    def from_reference(cls, model: DinoViT, weights: str, reference: Reference) -> "Deployment":
        """``weights`` is the model's WeightsIdentity.label; keys of other weights would not fit the centroids."""
        reference.check_weights(weights)
        return cls(model, reference.geometry, reference.centroids, tuple(reference.foreground), weights, reference.id)

    def labeller(self, device: str | torch.device) -> PatchLabeller:
        """A new labeller with the centroids on ``device``."""
        return PatchLabeller.build(self.centroids, self.foreground, device)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.geometry.input_size)  # type: ignore[return-value]

    def key(self, artifact: str, *, outputs: str, batch: int, precision: str, device: str) -> EngineKey:
        """Cache key of an engine; keys-only engines hold no centroids, so they do not depend on the reference."""
        return EngineKey(
            artifact=f"{artifact}-{outputs}-v{ENGINE_FORMAT}",
            weights=self.weights,
            reference=self.reference if outputs == "fused" else "",
            input_size=self.input_size,
            stride=self.geometry.stride,
            batch=batch,
            precision=precision,
            device=device_identity(device),
            versions=tuple(sorted(library_versions().items())),
        )

    def plane_shape(self, batch: int) -> tuple[int, int, int]:
        """The uint8 input of an engine: batch x the geometry's plane."""
        return (batch, *self.geometry.plane_size)

    def pixel_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The float32 input of a compiled core (ONNX, TensorRT): batch x 1 x model input."""
        return (batch, 1, *self.geometry.input_size)
