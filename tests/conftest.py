"""Shared fixtures: a random-weights model in the official layout, small geometries, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.vit import DinoViT
from models.weights import WeightsIdentity, random_state_dict

SHARED_DATA = Path(os.environ.get("BONESTREAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ULTRABONES = SHARED_DATA / "ultrabones100k"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def model() -> DinoViT:
    return DinoViT.from_state_dict(random_state_dict(0))


@pytest.fixture(scope="session")
def random_identity() -> WeightsIdentity:
    return WeightsIdentity(kind="random", seed=0)


@pytest.fixture(scope="session")
def deployment(model):
    """A 32x40 deployment with 4 random unit centroids, bone clusters 0 and 2 (modules with other needs define their own)."""
    from models.preprocess import Geometry
    from pipeline.infer.deployment import Deployment

    centroids = torch.nn.functional.normalize(torch.randn(4, 384, generator=torch.Generator().manual_seed(0)), dim=1).numpy()
    return Deployment(model, Geometry.fit((32, 40), input_size=(32, 40), resampling="area"), centroids, (0, 2), "random:0", "test-reference")


@pytest.fixture(scope="session")
def ultrabones() -> Path:
    if not ULTRABONES.is_dir():
        pytest.skip(f"shared UltraBones100k data not found at {ULTRABONES}")
    return ULTRABONES


@pytest.fixture(scope="session")
def make_segmenter(model, random_identity):
    """Calibrate on the given frames at a tiny input and return a torch-backend BoneSegmenter (random weights)."""
    import numpy as np

    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.clustering import KMeansSettings
    from models.preprocess import Geometry
    from pipeline.infer.backend import TorchBackend
    from pipeline.infer.deployment import Deployment
    from pipeline.segment.segmenter import BoneSegmenter

    def make(images: list[np.ndarray], input_size: tuple[int, int] = (32, 40), k: int | None = 3) -> BoneSegmenter:
        geometry = Geometry.fit(images[0].shape[:2], input_size=input_size, resampling="area")
        names = [f"ref{i}" for i in range(len(images))]
        settings = CalibrationSettings(kmeans=KMeansSettings(k=k, sample_interval=1))
        ref = calibrate(model, random_identity, geometry, images, names, settings, progress=False)
        return BoneSegmenter(ref, TorchBackend(Deployment.from_reference(model, random_identity.label, ref)), random_identity)

    return make
