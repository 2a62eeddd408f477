"""k-means of L2-normalised keys with faiss, k fixed or chosen by the original elbow rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from calibration.labelling import PatchLabeller
from models.errors import BonestreamError


@dataclass(frozen=True)
class KMeansSettings:
    """Defaults are the original co-segmentation's (faiss.Kmeans niter 300, nredo 10, elbow 0.975, k <= 14)."""

    k: int | None = None  # None: elbow rule
    elbow: float = 0.975
    k_max: int = 14
    niter: int = 300
    nredo: int = 10
    seed: int = 1234
    sample_interval: int = 100  # every n-th descriptor of each image trains the centroids


@dataclass
class Clustering:
    centroids: np.ndarray  # k x D float32, unnormalised as faiss leaves them
    labels: np.ndarray  # N int64, nearest centroid of every descriptor
    sq_distances: np.ndarray  # N float32
    curve: list[tuple[int, float]] = field(default_factory=list)  # (k, mean squared distance) tried
    chosen_by: str = "fixed"

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(x, dtype=np.float32).copy()
    faiss.normalize_L2(out)
    return out


def assign(descriptors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and squared distances with the runtime's own labeller, so calibration and runtime agree exactly."""
    labeller = PatchLabeller(torch.from_numpy(centroids), torch.zeros(len(centroids), dtype=torch.bool))
    with torch.no_grad():
        d = labeller.distances(torch.from_numpy(descriptors))
        sq, labels = d.min(dim=-1)
    return labels.numpy(), sq.numpy()


def _fit(sample: np.ndarray, k: int, s: KMeansSettings) -> np.ndarray:
    km = faiss.Kmeans(sample.shape[1], k, niter=s.niter, nredo=s.nredo, seed=s.seed, spherical=False, verbose=False)
    km.cp.min_points_per_centroid = 1  # only silences faiss's small-sample warning; the fit is unchanged
    km.train(sample)
    return np.asarray(km.centroids, dtype=np.float32)


def cluster(per_image: list[np.ndarray], settings: KMeansSettings = KMeansSettings()) -> Clustering:
    """Fit centroids on a raster subsample of every image's descriptors, then label all descriptors."""
    descriptors = l2_normalize(np.concatenate(per_image))
    sample = l2_normalize(np.concatenate([d[:: settings.sample_interval] for d in per_image]))
    if settings.k is not None:
        if not 1 <= settings.k <= len(sample):
            raise BonestreamError(
                f"k={settings.k} needs 1..{len(sample)} training descriptors; lower --sample-interval or use more frames"
            )
        centroids = _fit(sample, settings.k, settings)
        labels, sq = assign(descriptors, centroids)
        return Clustering(centroids, labels, sq, [(settings.k, float(sq.mean()))], "fixed")

    curve: list[tuple[int, float]] = []
    best = None
    for k in range(1, min(settings.k_max, len(sample)) + 1):
        centroids = _fit(sample, k, settings)
        labels, sq = assign(descriptors, centroids)
        mean = float(sq.mean())
        best = Clustering(centroids, labels, sq, curve, f"elbow {settings.elbow}")
        stop = bool(curve) and mean > settings.elbow * curve[-1][1]
        curve.append((k, mean))
        if stop:  # the k that triggered the stop is kept, as in the original
            break
    assert best is not None
    return best
