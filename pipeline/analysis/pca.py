"""Principal components of patch descriptors, fitted jointly over all frames so colours compare across them.

The fit streams: each batch adds to a descriptor count, sum and scatter matrix (float64), so no frame's
descriptors are held once counted. Components are ordered by variance; each one's sign is fixed so that its
largest-magnitude loading is positive, which makes the colours reproducible run to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PCA:
    """mean (d), components (k x d, unit rows), explained (k: fraction of the total variance)."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    def project(self, x: np.ndarray) -> np.ndarray:
        """... x d descriptors -> ... x k coordinates (float32)."""
        return ((x.astype(np.float64) - self.mean) @ self.components.T).astype(np.float32)


class PCAAccumulator:
    """Descriptors added batch by batch (any leading shape, last axis the descriptor), then one fit."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.sum = np.zeros(dim, np.float64)
        self.scatter = np.zeros((dim, dim), np.float64)

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, self.sum.size).astype(np.float64)
        self.n += flat.shape[0]
        self.sum += flat.sum(axis=0)
        self.scatter += flat.T @ flat

    def fit(self, k: int = 3) -> PCA:
        if self.n < 2:
            raise ValueError("PCA needs at least two descriptors")
        mean = self.sum / self.n
        cov = self.scatter / self.n - np.outer(mean, mean)
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(values)[::-1][:k]
        components = vectors[:, order].T
        signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
        total = max(float(np.clip(values, 0, None).sum()), np.finfo(np.float64).tiny)
        return PCA(mean, components * signs[:, None], np.clip(values[order], 0, None) / total)


def to_uint8(coordinates: np.ndarray) -> np.ndarray:
    """... x k coordinates -> uint8, each component min-max scaled to 0..255 over everything given (all frames),
    so one colour means one descriptor direction in every frame; a constant component maps to 0."""
    flat = coordinates.reshape(-1, coordinates.shape[-1])
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    scaled = (coordinates - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.rint(scaled * 255).clip(0, 255).astype(np.uint8)
