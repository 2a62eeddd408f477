"""Shared fixtures: a random-weights model in the official layout, small geometries, the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.vit import DinoViT
from models.weights import WeightsIdentity, random_state_dict

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ULTRABONES = SHARED_DATA / "ultrabones100k"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def model() -> DinoViT:
    return DinoViT.from_state_dict(random_state_dict(0))


@pytest.fixture(scope="session")
def random_identity() -> WeightsIdentity:
    return WeightsIdentity(kind="random", seed=0)


@pytest.fixture(scope="session")
def ultrabones() -> Path:
    if not ULTRABONES.is_dir():
        pytest.skip(f"shared UltraBones100k data not found at {ULTRABONES}")
    return ULTRABONES
