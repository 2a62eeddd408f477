"""What ``bonestream adapt`` writes: the adapted backbone in the official layout, the resumable training state, and
the loss curve. Every file is written atomically; nothing is pickled but tensors and plain values."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from models.errors import BonestreamError
from models.weights import file_sha256
from pipeline.publish.files import write_bytes_atomic, write_figure

STATE_FORMAT = "bonestream-adapt-state/1"
RANDOM_INIT_STAMP = "TRAINED FROM RANDOM WEIGHTS - not DINO; plumbing only"


def _save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def save_backbone(path: Path, backbone: Mapping[str, torch.Tensor]) -> str:
    """The backbone as a plain official-layout state dict (what ``--weights PATH`` loads strictly); its sha256."""
    _save(path, dict(backbone))
    return file_sha256(path)


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    _save(path, {"format": STATE_FORMAT, **state})


def load_state(path: Path) -> dict[str, Any]:
    """A training state written by :func:`save_state`, read with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, not a torch file: one line naming the file
        raise BonestreamError(f"{path}: not a readable adapt training state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise BonestreamError(f"{path}: not a bonestream adapt training state (format {STATE_FORMAT} expected)")
    return state


def plot_losses(path: Path, losses: Sequence[float], title: str, stamp: str | None, out_dim: int) -> Path:
    """Per-step loss and its running mean over 5% of the run, so the trend reads through the batch noise; a dashed
    line at ln(out_dim), the loss when the teacher's output is uniform, which early DINO steps approach."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss per step")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.8, label=f"mean of {window} steps")
    ax.axhline(np.log(out_dim), color="gray", ls="--", lw=1, label=f"ln {out_dim} (uniform teacher)")
    ax.set_xlabel("step")
    ax.set_ylabel("DINO loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return write_figure(fig, path, stamp)
