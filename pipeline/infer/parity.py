"""The parity gate: an engine is used only if its keys and labels match the fp32 torch reference.

Reduced precision can wreck a ViT silently (fp16 LayerNorm overflow gives near-constant outputs), so every built
engine is compared with fp32 torch on the calibration frames: mean key cosine, nearest-centroid label agreement
from its keys, and agreement of its fused bone mask. The verdict is recorded in the engine cache, so a refused
engine stays refused at run time instead of being rebuilt and used unchecked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from models.errors import BonestreamError
from pipeline.infer.backend import Backend, TorchBackend
from pipeline.infer.cache import EngineCache, EngineKey
from pipeline.infer.deployment import Deployment
from pipeline.infer.staging import StagedBackend


@dataclass(frozen=True)
class ParityThresholds:
    key_cosine: float = 0.99  # mean over patches
    agreement: float = 0.99  # fraction of patches with the same label / mask value


@dataclass(frozen=True)
class ParityResult:
    backend: str
    precision: str
    frames: int
    key_cosine: float
    label_agreement: float  # nearest-centroid cluster from the engine's keys vs from fp32 keys
    mask_agreement: float  # the fused engine's bone mask vs fp32 torch's
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)

    @property
    def passed(self) -> bool:
        t = self.thresholds
        return self.key_cosine >= t.key_cosine and min(self.label_agreement, self.mask_agreement) >= t.agreement

    def describe(self) -> str:
        t = self.thresholds
        verdict = "passed" if self.passed else "REFUSED"
        return (
            f"{self.backend} {self.precision}: parity {verdict} on {self.frames} calibration frames: "
            f"key cosine {self.key_cosine:.4f} (>= {t.key_cosine}), labels {self.label_agreement:.2%}, "
            f"mask {self.mask_agreement:.2%} (>= {t.agreement:.0%})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of corresponding vectors along the last axis."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.mean())


def nearest_labels(deployment: Deployment, keys: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return deployment.labeller("cpu")(torch.from_numpy(keys))[0].numpy()


def check_parity(
    candidate: StagedBackend,
    candidate_keys: StagedBackend,
    deployment: Deployment,
    frames: np.ndarray,
    *,
    calibration_labels: np.ndarray | None = None,
    thresholds: ParityThresholds = ParityThresholds(),
) -> ParityResult:
    """Compare a fused engine and its keys-only twin with fp32 torch on ``frames`` (the calibration frames' planes).

    ``calibration_labels`` (the reference's) proves the frames are the calibration frames: fp32 torch must
    reproduce them, or the comparison would say nothing about the deployment.
    """
    reference_keys = TorchBackend(deployment, candidate.device, "fp32", candidate.batch, outputs="keys").run(frames)[0]
    reference_labels = nearest_labels(deployment, reference_keys)
    if calibration_labels is not None:
        reproduced = float(np.mean(reference_labels == calibration_labels))
        if reproduced < thresholds.agreement:
            raise BonestreamError(
                f"fp32 torch reproduces only {reproduced:.1%} of the calibration labels on these frames: "
                "they are not the reference's calibration frames (pass the sources it was calibrated on)"
            )
    reference_mask = TorchBackend(deployment, candidate.device, "fp32", candidate.batch)(frames)[0]
    keys = candidate_keys.run(frames)[0]
    return ParityResult(
        backend=candidate.name,
        precision=candidate.precision,
        frames=int(frames.shape[0]),
        key_cosine=mean_cosine(keys, reference_keys),
        label_agreement=float(np.mean(nearest_labels(deployment, keys) == reference_labels)),
        mask_agreement=float(np.mean(candidate(frames)[0] == reference_mask)),
        thresholds=thresholds,
    )


def verdict_key(deployment: Deployment, backend: Backend) -> EngineKey:
    return deployment.key(f"parity-{backend.name}", outputs="fused", batch=backend.batch, precision=backend.precision, device=backend.device)


def record_verdict(cache: EngineCache, deployment: Deployment, backend: Backend, result: ParityResult) -> None:
    cache.record(verdict_key(deployment, backend), parity=result.to_dict())


def recorded_verdict(cache: EngineCache, deployment: Deployment, backend: Backend) -> dict[str, Any] | None:
    """The gate's last figures for this engine, or None when it was never checked."""
    return cache.facts(verdict_key(deployment, backend)).get("parity")
