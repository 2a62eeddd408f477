"""Nearest-centroid patch labelling: the one operator shared by calibration and every runtime backend.

In the original co-segmentation every patch label, reference images included, is a nearest-centroid lookup;
only the centroid fit and the vote are transductive. Applying this same module to new frames therefore
reproduces the calibration's labels on the reference frames and extends them to every later frame.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Keys are L2-normalised and centroids are means of unit vectors, so no squared distance exceeds 4.
FAR = 4.0


class PatchLabeller(nn.Module):
    """Keys (..., D) -> (cluster label, foreground flag, margin), all on the keys' device.

    margin = distance to the nearest background centroid minus distance to the nearest foreground centroid
    (squared Euclidean on L2-normalised keys, the metric faiss used to fit the centroids): > 0 means bone, and
    its size is the patch's confidence.
    """

    def __init__(self, centroids: torch.Tensor, foreground: torch.Tensor) -> None:
        super().__init__()
        if centroids.ndim != 2 or foreground.shape != (centroids.shape[0],):
            raise ValueError(f"centroids {tuple(centroids.shape)} and foreground {tuple(foreground.shape)} disagree")
        self.register_buffer("centroids", centroids.float().contiguous())
        self.register_buffer("centroid_sq", centroids.float().pow(2).sum(dim=1))
        self.register_buffer("foreground", foreground.bool())

    @classmethod
    def build(cls, centroids: np.ndarray, foreground: Sequence[int], device: str | torch.device = "cpu") -> "PatchLabeller":
        """A labeller with its own copy of ``centroids`` (k x D) on ``device``; ``foreground`` lists the bone clusters."""
        flags = torch.zeros(centroids.shape[0], dtype=torch.bool, device=device)
        flags[list(foreground)] = True
        return cls(torch.tensor(centroids, dtype=torch.float32, device=device), flags)

    def distances(self, keys: torch.Tensor) -> torch.Tensor:
        x = F.normalize(keys.float(), dim=-1)
        d = x.pow(2).sum(dim=-1, keepdim=True) + self.centroid_sq - 2.0 * (x @ self.centroids.T)
        return d.clamp_min_(0.0)

    def forward(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.distances(keys)
        labels = d.argmin(dim=-1)
        far = torch.full_like(d, FAR)
        nearest_fg = torch.where(self.foreground, d, far).amin(dim=-1)
        nearest_bg = torch.where(self.foreground, far, d).amin(dim=-1)
        return labels, self.foreground[labels], nearest_bg - nearest_fg
