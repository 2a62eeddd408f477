"""Co-segmentation of one set of frames as in the study, with this product's parts: calibrate on the set, then
label it (and optionally other frames) by nearest centroid with the product's segmenter. On the set's own
frames that labelling reproduces the calibration labels exactly, so the set's masks are the co-segmentation's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from calibration.calibrate import CalibrationSettings, calibrate
from calibration.reference import Reference
from models.preprocess import Geometry
from models.vit import DinoViT
from models.weights import WeightsIdentity
from pipeline.capture.frame import Frame
from pipeline.geometry_options import GeometryOptions
from pipeline.infer.deployment import Deployment
from pipeline.infer.select import BackendSpec, select_backend
from pipeline.segment.segmenter import BoneSegmenter, Prediction


@dataclass(frozen=True)
class Cosegmenter:
    """Everything a co-segmentation needs besides its frames: the model, the calibration and geometry options
    (as `bonestream calibrate` takes them) and the backend that labels frames."""

    model: DinoViT
    weights: WeightsIdentity
    geometry: GeometryOptions
    settings: CalibrationSettings
    backend: BackendSpec

    def geometry_for(self, images: Sequence[np.ndarray], names: Sequence[str]) -> Geometry:
        """The geometry `bonestream calibrate` would fit on these frames."""
        return self.geometry.build([Frame(i, image, name, None, 0) for i, (image, name) in enumerate(zip(images, names))])

    def fit(self, images: Sequence[np.ndarray], names: Sequence[str], geometry: Geometry | None = None) -> BoneSegmenter:
        """Calibrate on ``images`` (geometry from the options on these frames unless given) and return the
        segmenter that labels with the result."""
        geo = geometry or self.geometry_for(images, names)
        reference = calibrate(self.model, self.weights, geo, images, names, self.settings, progress=False, device=self.backend.device)
        deployment = Deployment.from_reference(self.model, self.weights.label, reference)
        return BoneSegmenter(reference, select_backend(self.backend, deployment).backend, self.weights)

    def run(
        self, images: Sequence[np.ndarray], names: Sequence[str], *, geometry: Geometry | None = None,
        others: Sequence[np.ndarray] = (), overlay: bool = False,
    ) -> tuple[Reference, list[Prediction], list[Prediction]]:
        """Co-segment ``images``; returns the reference, the set's predictions and those of ``others``
        (frames not in the set, labelled inductively by the same reference)."""
        seg = self.fit(images, names, geometry)
        preds = seg.predict(list(images) + list(others), list(names) + [f"other frame {i}" for i in range(len(others))], overlay=overlay)
        return seg.reference, preds[: len(images)], preds[len(images) :]


def reference_summary(reference: Reference) -> dict:
    """What a result needs to say about the calibration it came from."""
    g = reference.geometry
    return {
        "id": reference.id,
        "frames": list(reference.frames),
        "k": reference.k,
        "foreground": list(reference.foreground),
        "votes": list(reference.votes),
        "required_votes": int(reference.required_votes),
        "roi": list(g.roi),
        "input_size": list(g.input_size),
        "stride": g.stride,
    }
