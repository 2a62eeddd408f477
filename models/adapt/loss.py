"""DINO's self-distillation loss: the student's softmax is pulled towards the centred, sharpened teacher's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LossSettings:
    """Temperatures and centre momentum of DINO (Caron et al. 2021, ViT-S/8 recipe)."""

    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    center_momentum: float = 0.9


def view_pairs(teacher_views: int, student_views: int) -> list[tuple[int, int]]:
    """(teacher view, student view) pairs the loss averages over: every pair but a view with itself, since the
    student matching the teacher on the very same view teaches nothing (DINO's multi-crop loss)."""
    return [(t, s) for t in range(teacher_views) for s in range(student_views) if s != t]


class DINOLoss(nn.Module):
    """Cross-entropy between teacher and student views. Centring (subtracting an EMA of the teacher's mean output)
    keeps one prototype from dominating; sharpening (a low teacher temperature) keeps the output from going uniform:
    together they avoid collapse without negatives."""

    def __init__(self, out_dim: int, settings: LossSettings) -> None:
        super().__init__()
        self.settings = settings
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp(self, step: int, warmup_steps: int) -> float:
        """Linear warm-up of the teacher temperature, then constant (DINO: 0.04 -> 0.07)."""
        s = self.settings
        if step >= warmup_steps:
            return s.teacher_temp
        return s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * step / warmup_steps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_views: int, temp: float) -> torch.Tensor:
        """``student``: (views x B) x D logits, view-major; ``teacher``: (teacher_views x B) x D, view-major.

        Updates the centre with this batch's teacher outputs after using the old one, as DINO does."""
        student_views = student.shape[0] // (teacher.shape[0] // teacher_views)
        s_logp = F.log_softmax(student.float() / self.settings.student_temp, dim=-1).chunk(student_views)
        t_prob = F.softmax((teacher.float() - self.center) / temp, dim=-1).detach().chunk(teacher_views)
        pairs = view_pairs(teacher_views, student_views)
        loss = sum(torch.sum(-t_prob[t] * s_logp[s], dim=-1).mean() for t, s in pairs) / len(pairs)
        self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        m = self.settings.center_momentum
        self.center.mul_(m).add_(teacher.float().mean(dim=0, keepdim=True), alpha=1 - m)
