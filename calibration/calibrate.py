"""Calibrate once: keys + saliency of a few reference frames -> centroids and bone votes (a Reference)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Iterator, Sequence

import faiss
import numpy as np
import torch
from tqdm import tqdm

from calibration.clustering import Clustering, KMeansSettings, cluster
from calibration.reference import Reference
from calibration.saliency import ORIGINAL_HEADS, resize_nearest, saliency_maps
from calibration.voting import VoteSettings, vote
from models.encoder import build_encoder
from models.errors import BonestreamError
from models.placement import device_guard
from models.preprocess import Geometry
from models.vit import DinoViT, KeyOutput
from models.weights import WeightsIdentity


@dataclass(frozen=True)
class CalibrationSettings:
    """How clusters are fitted and voted. ``lowres_saliency`` takes saliency from a stride-8 pass on a half-size
    input, as the original code does to keep stride-4 attention affordable."""

    kmeans: KMeansSettings = field(default_factory=KMeansSettings)
    voting: VoteSettings = field(default_factory=VoteSettings)
    heads: tuple[int, ...] | None = None  # None: all heads
    lowres_saliency: bool = False
    preset: str = "study"
    remove_outliers: bool = False  # the original's option: frames unlike the others do not cluster or vote
    outlier_threshold: float = 0.7  # cosine of a frame's CLS key to the mean CLS key below which it is an outlier


PRESETS = {
    "study": CalibrationSettings(),
    "original": CalibrationSettings(
        voting=VoteSettings(tau=0.065, fraction=0.75, strict=True), heads=ORIGINAL_HEADS, lowres_saliency=True, preset="original"
    ),
}


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"bonestream": version("bonestream"), "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__}


def key_batches(
    model: DinoViT,
    geometry: Geometry,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    attention: bool = True,
    cls: bool = False,
    batch_size: int = 4,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Iterator[KeyOutput]:
    """Keys (CLS attention, CLS key) of frames through ``geometry``, batch by batch, on ``device``: computed by the
    same encoder the runtime engines are built from (uint8 planes in, normalisation in the graph), built there."""
    encoder = build_encoder(model, geometry, device)
    for start in tqdm(range(0, len(images), batch_size), desc="keys", unit="batch", disable=not progress):
        planes = geometry.planes(images[start : start + batch_size], names[start : start + batch_size])
        with torch.no_grad(), device_guard(device) as dev:  # entered per batch: nothing leaks into the caller between yields
            out = encoder(torch.from_numpy(planes).to(dev), attention=attention, cls=cls)
        yield out


def extract(
    model: DinoViT, geometry: Geometry, images: Sequence[np.ndarray], names: Sequence[str], *, attention: bool = True,
    cls: bool = False, batch_size: int = 4, progress: bool = True, device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Keys (N x h x w x 384), CLS attention (N x heads x h x w) and CLS keys (N x 384) of frames, in host memory;
    the last two None unless asked for."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for out in key_batches(
        model, geometry, images, names, attention=attention, cls=cls, batch_size=batch_size, progress=progress, device=device
    ):
        for store, t in zip(parts, (out.keys, out.attention, out.cls_key)):
            if t is not None:
                store.append(t.cpu().numpy())
    keys, att, cls_keys = (np.concatenate(p) if p else None for p in parts)
    return keys, att, cls_keys


def cls_cosines(cls_keys: np.ndarray) -> np.ndarray:
    """Cosine of each frame's CLS key to the mean CLS key (the original's outlier test: an inlier has at least the threshold)."""
    mean = cls_keys.mean(axis=0)
    norms = np.maximum(np.linalg.norm(cls_keys, axis=1) * np.linalg.norm(mean), 1e-8)
    return (cls_keys @ mean) / norms


def _saliency(model: DinoViT, geometry: Geometry, images, names, attention, settings, progress, device) -> np.ndarray:
    if not settings.lowres_saliency:
        return saliency_maps(torch.from_numpy(attention), settings.heads)
    h, w = geometry.input_size
    half = replace(geometry, input_size=(max(geometry.patch, h // 2), max(geometry.patch, w // 2)), stride=geometry.patch)
    _, low, _ = extract(model, half, images, names, progress=progress, device=device)
    return resize_nearest(saliency_maps(torch.from_numpy(low), settings.heads), geometry.grid)


def _distance_stats(clustering: Clustering) -> list[dict[str, float]]:
    stats = []
    for c in range(clustering.k):
        d = clustering.sq_distances[clustering.labels == c]
        if d.size == 0:
            stats.append({"count": 0})
            continue
        p50, p95, p99 = np.percentile(d, [50, 95, 99])
        stats.append({"count": int(d.size), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(d.max())})
    return stats


def calibrate(
    model: DinoViT,
    weights: WeightsIdentity,
    geometry: Geometry,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    settings: CalibrationSettings = CalibrationSettings(),
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Reference:
    """Fit centroids on the reference frames' keys and vote each cluster bone or not."""
    if len(images) < 1:
        raise BonestreamError("calibration needs at least one reference frame")
    if len(set(names)) != len(names):
        raise BonestreamError("calibration frame names must be unique")
    keys, attention, cls_keys = extract(
        model, geometry, images, names, attention=not settings.lowres_saliency, cls=settings.remove_outliers,
        progress=progress, device=device,
    )
    recorded = asdict(settings)
    if settings.remove_outliers:
        cosine = cls_cosines(cls_keys)
        inlier = cosine >= settings.outlier_threshold
        keep = np.flatnonzero(inlier)
        recorded["outliers"] = [{"frame": names[i], "cls_cosine": float(cosine[i])} for i in np.flatnonzero(~inlier)]
        if keep.size == 0:
            raise BonestreamError(f"outlier removal kept no frame (CLS cosines {np.round(cosine, 3).tolist()} all < {settings.outlier_threshold})")
        images, names, keys = [images[i] for i in keep], [names[i] for i in keep], keys[keep]
        attention = None if attention is None else attention[keep]
    n, gh, gw, dim = keys.shape
    clustering = cluster(list(keys.reshape(n, gh * gw, dim)), settings.kmeans)
    saliency = _saliency(model, geometry, images, names, attention, settings, progress, device)
    labels = clustering.labels.reshape(n, gh, gw)
    result = vote(list(labels), list(saliency), clustering.k, settings.voting)
    recorded["k_curve"] = [[k, m] for k, m in clustering.curve]
    recorded["k_chosen_by"] = clustering.chosen_by
    return Reference(
        geometry=geometry,
        weights=weights.to_dict(),
        centroids=clustering.centroids,
        foreground=tuple(int(c) for c in result.foreground),
        votes=[int(v) for v in result.votes],
        required_votes=result.required,
        mean_saliency=result.mean_saliency,
        cluster_sizes=np.bincount(clustering.labels, minlength=clustering.k).tolist(),
        distance_stats=_distance_stats(clustering),
        settings=recorded,
        frames=list(names),
        calibration_labels=labels,
        versions=versions(),
    )
