"""The saliency vote that decides which clusters are bone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VoteSettings:
    """Study defaults: tau 0.2 (>=), 65 % of reference frames. The original code: 0.065, strict >, 75 %."""

    tau: float = 0.2
    fraction: float = 0.65
    strict: bool = False


@dataclass
class VoteResult:
    foreground: np.ndarray  # sorted cluster ids voted bone
    votes: np.ndarray  # k: frames voting each cluster
    required: int  # votes needed
    mean_saliency: np.ndarray  # frames x k, NaN where the cluster is absent from the frame


def required_votes(n_frames: int, fraction: float) -> int:
    # round() guards against 20 * 0.65 = 13.000000000000002 turning into 14
    return max(1, math.ceil(round(n_frames * fraction, 9)))


def vote(labels: list[np.ndarray], saliency: list[np.ndarray], k: int, settings: VoteSettings = VoteSettings()) -> VoteResult:
    """A frame votes for cluster c when the mean saliency of its patches in c passes tau; absent clusters get no vote."""
    table = np.full((len(labels), k), np.nan, dtype=np.float64)
    for i, (lab, sal) in enumerate(zip(labels, saliency)):
        lab, sal = lab.ravel(), sal.ravel().astype(np.float64)
        counts = np.bincount(lab, minlength=k)
        sums = np.bincount(lab, weights=sal, minlength=k)
        present = counts > 0
        table[i, present] = sums[present] / counts[present]
    with np.errstate(invalid="ignore"):
        passed = table > settings.tau if settings.strict else table >= settings.tau
    votes = passed.sum(axis=0)
    required = required_votes(len(labels), settings.fraction)
    return VoteResult(np.flatnonzero(votes >= required), votes, required, table)
