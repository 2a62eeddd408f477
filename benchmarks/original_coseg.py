"""The original co-segmentation (dino-vit-features ``find_cosegmentation``), re-implemented independently of
bonestream's pipeline from its description (../shared/docs/algorithm.md, section 1), to check ``--preset original``.

Only the ViT is shared: the plain three-channel ``DinoViT`` forward, itself checked against an independent
implementation to 1e-6. Everything around it follows the original's own route: PIL opens the file as RGB,
torchvision's ``Resize(int)`` rule with Pillow's Lanczos, ToTensor and Normalize on three channels, stride-4 keys,
saliency from a stride-8 pass on the file resized again to half the load size, Pillow's nearest onto the key grid,
faiss k-means on every 100th descriptor with the elbow rule, strict threshold votes, ceil of the vote percentage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import faiss
import numpy as np
import torch
from PIL import Image

from models.vit import DinoViT

MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)


@dataclass(frozen=True)
class Original:
    """find_cosegmentation's defaults."""

    load_size: int = 224
    stride: int = 4
    elbow: float = 0.975
    thresh: float = 0.065
    votes_percentage: int = 75
    sample_interval: int = 100
    heads: tuple[int, ...] = (0, 2, 4, 5)


@dataclass
class Cosegmentation:
    labels: list[np.ndarray]  # per image, grid-shaped cluster ids
    k: int
    salient: np.ndarray  # cluster ids voted foreground
    votes: np.ndarray


def load(path: Path, size: int | tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """1 x 3 x H x W normalised tensor and (H, W), as the original extractor's ``preprocess``."""
    image = Image.open(path).convert("RGB")
    if isinstance(size, int):  # torchvision Resize(int): the short side becomes ``size``, the long one is truncated
        w, h = image.size
        size = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    x = (np.asarray(image, np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None], size


def saliency(model: DinoViT, path: Path, load_size: tuple[int, int], grid: tuple[int, int], heads: Sequence[int]) -> np.ndarray:
    x, _ = load(path, (load_size[0] // 2, load_size[1] // 2))
    with torch.no_grad():
        att = model(x, stride=8, attention=True).attention[0]
    sal = att[list(heads)].mean(dim=0)
    sal = ((sal - sal.min()) / (sal.max() - sal.min())).numpy().astype(np.float32)
    return np.asarray(Image.fromarray(sal).resize((grid[1], grid[0]), Image.Resampling.NEAREST))


def cosegment(model: DinoViT, paths: Sequence[Path], o: Original = Original()) -> Cosegmentation:
    descriptors, maps, grids = [], [], []
    for path in paths:
        x, size = load(path, o.load_size)
        with torch.no_grad():
            keys = model(x, stride=o.stride).keys[0]
        grids.append(tuple(keys.shape[:2]))
        descriptors.append(keys.reshape(-1, keys.shape[-1]).numpy())
        maps.append(saliency(model, path, size, grids[-1], o.heads).ravel())
    every = np.ascontiguousarray(np.concatenate(descriptors), dtype=np.float32)
    faiss.normalize_L2(every)
    sample = np.ascontiguousarray(np.concatenate([d[:: o.sample_interval] for d in descriptors]), dtype=np.float32)
    faiss.normalize_L2(sample)
    means: list[float] = []
    for k in range(1, 15):
        km = faiss.Kmeans(sample.shape[1], k, niter=300, nredo=10)
        km.train(sample)
        dist, labels = km.index.search(every, 1)
        means.append(float(dist.sum()) / len(every))
        if len(means) > 1 and means[-1] > o.elbow * means[-2]:
            break
    per_image = np.split(labels[:, 0], np.cumsum([g[0] * g[1] for g in grids])[:-1])
    votes = np.zeros(k + 1)
    for lab, sal in zip(per_image, maps):
        for c in range(k + 1):
            members = sal[lab == c]
            if members.size and members.mean() > o.thresh:
                votes[c] += 1
    salient = np.flatnonzero(votes >= math.ceil(len(paths) * o.votes_percentage / 100))
    return Cosegmentation([lab.reshape(g) for lab, g in zip(per_image, grids)], k, salient, votes[:k])


def refine(image: Image.Image, grid_mask: np.ndarray) -> np.ndarray:
    """The original's GrabCut step on one image at its load size: the patch mask stretched over the image by Pillow
    (mode "1" resizes with nearest whatever filter is asked), 7x7 erosions, 5 iterations, the raw mask on failure."""
    resized = np.array(Image.fromarray(grid_mask.astype(bool)).resize(image.size, resample=Image.Resampling.LANCZOS))
    kernel = np.ones((7, 7), np.uint8)
    full = np.full(resized.shape, cv2.GC_PR_FGD, np.uint8)
    full[cv2.erode(np.uint8(1 - resized), kernel) == 1] = cv2.GC_BGD
    full[cv2.erode(np.uint8(resized), kernel) == 1] = cv2.GC_FGD
    cv2.setRNGSeed(0)  # the original leaves OpenCV's generator as it is; seeded here so runs compare
    try:
        cv2.grabCut(np.array(image.convert("RGB")), full, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return resized.astype(np.uint8)
    return np.where((full == cv2.GC_BGD) | (full == cv2.GC_PR_BGD), 0, 1).astype(np.uint8)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two partitions of the same items (1.0: identical up to renaming the clusters)."""
    a, b = np.unique(a.ravel(), return_inverse=True)[1], np.unique(b.ravel(), return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), a.size * (a.size - 1) / 2
    expected = rows * cols / total
    top = (rows + cols) / 2 - expected
    return 1.0 if top == 0 else (index - expected) / top
