"""The parity gate before a reduced-precision run's first frame, on any device and backend.

``bonestream export`` gates engines ahead of time and records each verdict; a run in fp16, bf16 or int8 uses that verdict
when there is one, or checks the engine it just built on the reference's calibration frames (found by name in the
sources it was calibrated on) and records the verdict. A refused engine never labels a frame, and an unchecked one
is not run as if it had passed.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from models.errors import BonestreamError
from pipeline.infer.backend import Backend
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.parity import ParityResult, ParityThresholds, check_parity, record_verdict, recorded_verdict

GATED_PRECISIONS = ("fp16", "bf16", "int8")  # every reduced precision; fp32 is the reference


class ParityRefused(BonestreamError):
    """The engine's keys or labels differ from fp32 torch's beyond the thresholds (the message has the figures)."""


class ParityUnchecked(BonestreamError):
    """No recorded verdict for the engine and no calibration frames to check it on."""


def recorded_result(verdict: dict) -> ParityResult:
    names = {f.name for f in fields(ParityResult)}
    values = {k: v for k, v in verdict.items() if k in names}
    values["thresholds"] = ParityThresholds(**verdict.get("thresholds", {}))
    return ParityResult(**values)


def gate(backend: Backend, deployment: Deployment, cache: EngineCache, frames: np.ndarray | None, calibration_labels: np.ndarray | None) -> ParityResult | None:
    """The verdict ``backend`` runs on (None for fp32, the reference). ``frames``: the calibration
    frames' planes, or None to rely on a verdict recorded by ``bonestream export`` or an earlier run. Raises
    ParityRefused (one line with the figures) or ParityUnchecked."""
    if backend.precision not in GATED_PRECISIONS:
        return None
    verdict = recorded_verdict(cache, deployment, backend)
    if verdict is not None:
        result = recorded_result(verdict)
    elif frames is None:
        raise ParityUnchecked(
            f"{backend.name} {backend.precision} on {backend.device} (batch {backend.batch}) has not passed the parity gate: pass "
            "--calibration-sources with the sources the reference was calibrated on, or run `bonestream export` with them first"
        )
    else:
        from pipeline.infer.select import BackendSpec, make_backend  # select's auto takes this gate: imported when used

        keys = make_backend(BackendSpec(backend.name, backend.device, backend.precision, backend.batch, "keys", getattr(backend, "sdpa", "auto")), deployment, cache)
        result = check_parity(backend, keys, deployment, frames, calibration_labels=calibration_labels)
        record_verdict(cache, deployment, backend, result)
    if not result.passed:
        raise ParityRefused(result.describe())
    return result


def refusal(backend: Backend, deployment: Deployment, cache: EngineCache, frames: np.ndarray | None, calibration_labels: np.ndarray | None) -> str | None:
    """``gate`` as ``auto`` asks it (select.Gate): why ``backend`` may not run, or None when it may."""
    try:
        gate(backend, deployment, cache, frames, calibration_labels)
    except (ParityRefused, ParityUnchecked) as exc:
        return str(exc)
    return None
