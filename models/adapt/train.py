"""One DINO training step at a time (Caron et al. 2021): student and EMA teacher, each our ViT-S/8 plus a DINO head.

The recipe is DINO's: AdamW with a linear warm-up then cosine learning rate, a cosine weight-decay schedule
(0.04 -> 0.4, biases and norms exempt), per-parameter gradient clipping, the last head layer frozen for the first
epoch, and a teacher updated as an exponential moving average of the student with momentum 0.996 -> 1 (cosine). On
CUDA the forward passes run under autocast (bf16, or fp16 with loss scaling) and torch.compile; on the CPU in fp32,
where a run is deterministic, so a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from models.adapt.crops import CropSettings
from models.adapt.head import DINOHead, HeadSettings
from models.adapt.loss import DINOLoss, LossSettings
from models.adapt.views import GLOBAL_VIEWS, Batch
from models.errors import BonestreamError
from models.placement import build_on, device_guard, resolve
from models.vit import DinoViT
from models.weights import official_layout


@dataclass(frozen=True)
class AdaptSettings:
    """A whole run: its length fixes every schedule, so it is stored with the run and reused on resume."""

    steps: int
    batch_size: int = 32
    lr: float = 0.0005 * 32 / 256  # DINO: 0.0005 x batch / 256
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum: float = 0.996
    clip_grad: float = 3.0  # 0: no clipping
    freeze_last_layer_steps: int = 0
    teacher_temp_warmup_steps: int = 0
    view_gap: int = 4
    seed: int = 0
    head: HeadSettings = field(default_factory=HeadSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    crops: CropSettings = field(default_factory=CropSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdaptSettings":
        crops = {k: tuple(v) if isinstance(v, list) else v for k, v in data["crops"].items()}
        parts = {"head": HeadSettings(**data["head"]), "loss": LossSettings(**data["loss"]), "crops": CropSettings(**crops)}
        return cls(**{**data, **parts})


def cosine(start: float, end: float, step: int, total: int) -> float:
    """``start`` at step 0 to ``end`` at ``total`` along half a cosine."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def learning_rate(s: AdaptSettings, step: int) -> float:
    """Linear warm-up from 0, then cosine decay to ``min_lr``."""
    if step < s.warmup_steps:
        return s.lr * step / s.warmup_steps
    return cosine(s.lr, s.min_lr, step - s.warmup_steps, s.steps - s.warmup_steps)


def cls_embedding(vit: DinoViT, x: torch.Tensor) -> torch.Tensor:
    """The normalised CLS token, DINO's image embedding: the key path's blocks, then the last block whole and the norm."""
    tokens, _ = vit.block_input(x)
    return vit.norm(vit.blocks[-1](tokens)[:, 0])


class DinoNet(nn.Module):
    """Backbone + head; crops of each size go through the backbone together, the head once (DINO's multi-crop wrapper)."""

    def __init__(self, backbone: Mapping[str, torch.Tensor], head: HeadSettings) -> None:
        super().__init__()
        self.backbone = DinoViT()
        self.backbone.load_state_dict(backbone, strict=True)
        self.head = DINOHead(head)

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([cls_embedding(self.backbone, x) for x in crops]))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m teacher + (1 - m) student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def clip_gradients(module: nn.Module, limit: float) -> None:
    """Each parameter's gradient scaled down to norm ``limit`` when above it (DINO clips per parameter)."""
    for p in module.parameters():
        if p.grad is not None:
            norm = p.grad.norm()
            p.grad.mul_(torch.clamp(limit / (norm + 1e-6), max=1.0))


class Adapter:
    """Student, teacher, loss centre and optimiser on one device; ``train_step`` advances ``step`` by one."""

    def __init__(self, backbone: Mapping[str, torch.Tensor], settings: AdaptSettings, device: str = "cpu") -> None:
        self.settings = settings
        self.device = resolve(device)
        self.step = 0
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.manual_seed(settings.seed)  # the head's initialisation is part of the run
            self.student = build_on(self.device, lambda d: DinoNet(backbone, settings.head)).train().requires_grad_(True)
        self.teacher = build_on(self.device, lambda d: DinoNet(backbone, settings.head))
        self.teacher.load_state_dict(self.student.state_dict())
        self.loss = build_on(self.device, lambda d: DINOLoss(settings.head.out_dim, settings.loss))
        decayed = [p for n, p in self.student.named_parameters() if not n.endswith(".bias") and p.ndim > 1]
        exempt = [p for n, p in self.student.named_parameters() if n.endswith(".bias") or p.ndim <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decayed}, {"params": exempt, "weight_decay": 0.0}], lr=0.0)
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.student_forward = torch.compile(self.student) if cuda else self.student
        self.teacher_forward = torch.compile(self.teacher) if cuda else self.teacher

    def momentum(self, step: int) -> float:
        return cosine(self.settings.momentum, 1.0, step, self.settings.steps)

    def train_step(self, batch: Batch) -> float:
        """One optimisation step on ``batch``; returns its loss."""
        s, i = self.settings, self.step
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(s, i)
        self.optimizer.param_groups[0]["weight_decay"] = cosine(s.weight_decay, s.weight_decay_end, i, s.steps)
        with device_guard(self.device), torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            crops = [batch.student_global] + ([batch.student_local] if batch.student_local is not None else [])
            with torch.no_grad():
                teacher_out = self.teacher_forward([batch.teacher.to(self.device)])
            student_out = self.student_forward([c.to(self.device) for c in crops])
            loss = self.loss(student_out, teacher_out, GLOBAL_VIEWS, self.loss.teacher_temp(i, s.teacher_temp_warmup_steps))
        if not torch.isfinite(loss):
            raise BonestreamError(f"adapt: the loss is {loss.item()} at step {i}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if s.clip_grad:
            clip_gradients(self.student, s.clip_grad)
        if i < s.freeze_last_layer_steps:
            self.student.head.last_v.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.teacher, self.student, self.momentum(i))
        self.step += 1
        return float(loss.item())

    def teacher_backbone(self) -> dict[str, torch.Tensor]:
        """The teacher's ViT in the official checkpoint's key order, on the CPU: DINO releases the teacher."""
        state = self.teacher.backbone.state_dict()
        return {k: state[k].detach().cpu().clone() for k in official_layout()}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, tensors and plain values only (loadable with weights_only=True). Student
        and teacher keep DINO's ``backbone.`` / ``head.`` names, so the weights loader also reads this file."""
        return {"step": self.step, "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "center": self.loss.center, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.loss.center.copy_(state["center"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
