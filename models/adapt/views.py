"""Training batches: VET-DINO's multi-view pairs (Dourson et al.) on ultrasound recordings.

For each sample a recording and a frame i are drawn; the teacher's global views come from frame i and the student's
views (the same global boxes, plus local crops) from a frame j of the same recording with |i - j| <= view_gap, so the
student must predict what the teacher sees in a neighbouring frame: speckle and probe motion change, anatomy does not.
Every draw comes from a generator seeded by (seed, step): a step's batch never depends on the steps before it, so a
resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models.adapt.crops import CropSettings, draw, render

GLOBAL_VIEWS = 2  # DINO: two global views, both seen by the teacher


@dataclass(frozen=True)
class Recording:
    """One source's frames (N x H x W uint8, in time order) and the name it is reported under."""

    name: str
    frames: np.ndarray


@dataclass(frozen=True)
class ViewPair:
    recording: int
    teacher_frame: int
    student_frame: int


@dataclass
class Batch:
    """View-major stacks (all samples of view 0, then view 1, ...), as the loss chunks them."""

    teacher: torch.Tensor  # (2 B) x 3 x G x G
    student_global: torch.Tensor  # (2 B) x 3 x G x G
    student_local: torch.Tensor | None  # (L B) x 3 x l x l, None without local crops
    pairs: list[ViewPair]


def draw_pair(rng: np.random.Generator, recordings: Sequence[Recording], view_gap: int) -> ViewPair:
    """A frame uniformly over all frames, and its partner uniformly within ``view_gap`` in the same recording."""
    sizes = np.array([len(r.frames) for r in recordings])
    flat = int(rng.integers(0, sizes.sum()))
    rec = int(np.searchsorted(np.cumsum(sizes), flat, side="right"))
    i = flat - int(sizes[:rec].sum())
    j = int(rng.integers(max(0, i - view_gap), min(sizes[rec] - 1, i + view_gap) + 1))
    return ViewPair(rec, i, j)


def make_batch(recordings: Sequence[Recording], batch_size: int, crops: CropSettings, view_gap: int, seed: int, step: int) -> Batch:
    rng = np.random.default_rng([seed, step])
    teacher: list[list[torch.Tensor]] = [[] for _ in range(GLOBAL_VIEWS)]
    student: list[list[torch.Tensor]] = [[] for _ in range(GLOBAL_VIEWS)]
    local: list[list[torch.Tensor]] = [[] for _ in range(crops.local_crops)]
    pairs = []
    for _ in range(batch_size):
        pair = draw_pair(rng, recordings, view_gap)
        frames = recordings[pair.recording].frames
        t_frame, s_frame = frames[pair.teacher_frame], frames[pair.student_frame]
        for v in range(GLOBAL_VIEWS):
            params = draw(rng, t_frame.shape, crops, local=False)
            teacher[v].append(render(t_frame, params, crops.global_size))
            student[v].append(render(s_frame, params, crops.global_size))
        for v in range(crops.local_crops):
            local[v].append(render(s_frame, draw(rng, s_frame.shape, crops, local=True), crops.local_size))
        pairs.append(pair)

    def stack(views: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([t for view in views for t in view])

    return Batch(stack(teacher), stack(student), stack(local) if crops.local_crops else None, pairs)
