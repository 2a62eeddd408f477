"""Label frames with a calibrated reference: a small predictor API over any backend.

    segmenter = BoneSegmenter.create("ref.json", weights="random:0")
    prediction = segmenter.predict([frame])[0]   # prediction.mask: 0/255 at frame resolution
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from calibration.reference import Reference
from models.loader import load_model
from models.weights import WeightsIdentity
from pipeline.infer.backend import Backend
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.select import BackendSpec, Selection, select_backend


@dataclass
class Prediction:
    """One frame's result. ``margin`` > 0 marks bone; its size is the patch's confidence."""

    patch_mask: np.ndarray  # h x w bool
    margin: np.ndarray  # h x w float32
    mask: np.ndarray  # frame-size uint8, 0 or 255, zeros outside the ROI
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def foreground_fraction(self) -> float:
        return float(self.patch_mask.mean())

    @property
    def confidence(self) -> float:
        """Mean margin of the patches labelled bone (0 when none): how far bone patches sit from the boundary."""
        return float(self.margin[self.patch_mask].mean()) if self.patch_mask.any() else 0.0


class BoneSegmenter:
    selection: Selection | None = None  # how create() chose the backend (auto's timings and fallbacks)

    def __init__(self, reference: Reference, backend: Backend, weights: WeightsIdentity) -> None:
        reference.check_weights(weights.label)
        self.reference = reference
        self.geometry = reference.geometry
        self.backend = backend
        self.weights = weights

    @classmethod
    def create(
        cls,
        reference: Reference | str,
        weights: str | None = None,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        batch: int = 1,
        cache: EngineCache | None = None,
        allow_download: bool = True,
        progress: bool = True,
    ) -> "BoneSegmenter":
        """``backend``: torch, torch-compile, onnxruntime, onnxruntime-trt, tensorrt, or auto (fastest here, with
        every fallback reported in ``selection``); ``batch`` is the engines' static batch size."""
        ref = reference if isinstance(reference, Reference) else Reference.load(reference)
        model, identity = load_model(weights, allow_download=allow_download, progress=progress)
        deployment = Deployment.from_reference(model, identity.label, ref)
        selection = select_backend(BackendSpec(backend, device, precision, batch), deployment, cache)
        segmenter = cls(ref, selection.backend, identity)
        segmenter.selection = selection
        return segmenter

    def prepare(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
        return self.geometry.preprocess_batch(images, names)

    def finish(self, patch_mask: np.ndarray, margin: np.ndarray) -> Prediction:
        flags = patch_mask.astype(bool)
        mask = self.geometry.patch_to_frame(flags.astype(np.uint8) * np.uint8(255))
        return Prediction(flags, margin, mask)

    def predict(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Prediction]:
        t0 = time.perf_counter()
        batch = self.prepare(images, names)
        t1 = time.perf_counter()
        masks, margins = self.backend(batch)
        t2 = time.perf_counter()
        out = [self.finish(m, g) for m, g in zip(masks, margins)]
        t3 = time.perf_counter()
        n = len(images)
        for p in out:
            p.timings_ms = {"preprocess": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n, "postprocess": (t3 - t2) * 1e3 / n}
        return out
