"""What every engine is built from: the fp32 graph of one calibration, and the identities that key its cache."""

from __future__ import annotations

from dataclasses import dataclass

from calibration.reference import Reference
from models.vit import DinoViT
from pipeline.infer.cache import EngineKey, device_identity, library_versions
from pipeline.infer.graph import SegmentationGraph


@dataclass(frozen=True)
class Deployment:
    """The fp32 torch graph (model + the reference's labeller), its static input size, and whose it is."""

    graph: SegmentationGraph
    input_size: tuple[int, int]
    weights: str  # WeightsIdentity.label
    reference: str  # Reference.id

    @classmethod
    def from_reference(cls, model: DinoViT, weights: str, reference: Reference) -> "Deployment":
        """``weights`` is the model's WeightsIdentity.label; keys of other weights would not fit the centroids."""
        reference.check_weights(weights)
        graph = SegmentationGraph(model, reference.labeller(), reference.geometry.stride)
        return cls(graph, tuple(reference.geometry.input_size), weights, reference.id)

    def key(self, artifact: str, *, outputs: str, batch: int, precision: str, device: str) -> EngineKey:
        """Cache key of an engine; keys-only engines hold no centroids, so they do not depend on the reference."""
        return EngineKey(
            artifact=f"{artifact}-{outputs}",
            weights=self.weights,
            reference=self.reference if outputs == "fused" else "",
            input_size=self.input_size,
            stride=self.graph.stride,
            batch=batch,
            precision=precision,
            device=device_identity(device),
            versions=tuple(sorted(library_versions().items())),
        )

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, *self.input_size)
