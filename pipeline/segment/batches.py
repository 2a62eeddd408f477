"""One engine per static batch size, so a batching stage that gathered n frames pays for little padding.

Engines have static shapes (CUDA graphs, io-bindings, TensorRT profiles are built for one batch), so a batch of n
frames runs on the smallest static size >= n, padded as ``StaticInput`` pads. Sizes are 1, 2, 4, ... up to the
largest: at most twice the work of n frames, and log2(largest) + 1 engines. Every engine of a set is built from one
deployment (one model, one reference), each captured into its own CUDA graph on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import torch

from calibration.reference import Reference
from models.vit import DinoViT
from models.weights import WeightsIdentity
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.select import BackendSpec, Gate, select_backend
from pipeline.segment.segmenter import BoneSegmenter


def static_sizes(largest: int) -> tuple[int, ...]:
    """``8`` -> ``(1, 2, 4, 8)``; ``6`` -> ``(1, 2, 4, 6)``."""
    if largest < 1:
        raise ValueError(f"largest batch {largest} must be >= 1")
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i < largest]
    return (*sizes, largest)


@dataclass(frozen=True)
class StaticBatches:
    """Segmenters of one reference by static batch size."""

    segmenters: Mapping[int, BoneSegmenter]

    @classmethod
    def single(cls, segmenter: BoneSegmenter) -> "StaticBatches":
        return cls({segmenter.batch: segmenter})

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.segmenters))

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    @property
    def first(self) -> BoneSegmenter:
        """The smallest engine's segmenter: the reference, geometry, weights and device all of them share."""
        return self.segmenters[self.sizes[0]]

    @property
    def device(self) -> torch.device:
        return self.first.device

    def for_frames(self, n: int) -> BoneSegmenter:
        """The smallest static batch that holds ``n`` frames (the largest when none does: predict then chunks)."""
        return self.segmenters[next((b for b in self.sizes if b >= n), self.largest)]


def build_static_batches(
    model: DinoViT, identity: WeightsIdentity, reference: Reference, spec: BackendSpec, *, refine: str | None = None,
    cache: EngineCache | None = None, gate: Gate | None = None,
) -> StaticBatches:
    """An engine for each of ``static_sizes(spec.batch)`` from one deployment, each built, warmed up and (on CUDA)
    captured before any frame; ``model`` is only read (every engine copies what it needs onto its device)."""
    deployment = Deployment.from_reference(model, identity.label, reference)
    segmenters = {}
    for size in static_sizes(spec.batch):
        selection = select_backend(replace(spec, batch=size), deployment, cache, gate=gate)
        segmenters[size] = BoneSegmenter(reference, selection.backend, identity, refine)
        segmenters[size].selection = selection
        # auto chooses once, at the first size: a frame's labels must not depend on the batch it lands in
        spec = replace(spec, name=selection.backend.name, precision=selection.backend.precision)
    return StaticBatches(segmenters)
