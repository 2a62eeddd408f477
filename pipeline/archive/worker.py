"""One archive worker: loads the model once, then segments recordings with the code `bonestream segment` runs.

A plain class: the driver makes it a Ray actor, so this module (and a worker's imports) needs no Ray."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.errors import BonestreamError
from pipeline.archive.manifest import RECORD
from pipeline.archive.recordings import Recording
from pipeline.offline import segment_sources
from pipeline.publish.files import write_json_atomic
from pipeline.segment.segmenter import BoneSegmenter

PARTIAL = ".partial"  # DIR/.partial/: outputs being written; nothing there counts as done


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker builds its segmenter from, and where it writes."""

    reference: str
    weights: str | None
    out_dir: str
    device: str = "cpu"
    backend: str = "torch"
    precision: str = "fp32"
    batch_size: int = 1
    refine: str | None = None
    overlay: bool = True
    threads: int = 1


def one_line(exc: BaseException) -> str:
    """An error as the manifest and the final table show it: our errors' own line, others with their type."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if isinstance(exc, (BonestreamError, OSError)) else f"{type(exc).__name__}: {text}"


def publish(tmp: Path, target: Path) -> None:
    """Move a complete output folder into place with renames: a reader sees the old folder, none, or the new one,
    never a mix (an older result for other content or another reference is replaced)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = tmp.with_name(tmp.name + "-old")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


class ArchiveWorker:
    """Builds the segmenter (weights, engine, warm-up) once per process; ``process`` runs one recording."""

    def __init__(self, config: WorkerConfig) -> None:
        torch.set_num_threads(config.threads)
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.seg = BoneSegmenter.create(
            config.reference, config.weights, device=config.device, precision=config.precision, backend=config.backend,
            batch=config.batch_size, refine=config.refine, progress=False,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def pid(self) -> int:
        return os.getpid()

    def process(self, recording: Recording) -> dict[str, Any]:
        """Masks, overlay video and summary.json into DIR/.partial/, then published as DIR/<key>/ with recording.json.
        A recording that fails is reported with its error (its partial output removed); the worker goes on."""
        started = time.perf_counter()
        tmp = self.out_dir / PARTIAL / uuid.uuid4().hex
        result: dict[str, Any] = {"worker": self.name, "frames": 0}
        try:
            summary = json.loads(segment_sources(
                self.seg, [str(recording.path)], tmp, batch_size=self.config.batch_size, overlay=self.config.overlay, progress=False,
            ).read_bytes())
            result["frames"] = summary["frames"]
            write_json_atomic(tmp / RECORD, {
                "key": recording.key, "source": str(recording.path), "sha256": recording.sha256,
                "reference": self.seg.reference.id, "weights": self.seg.weights.label, "warning": self.seg.weights.warning,
                "frames": summary["frames"],
            })
            publish(tmp, self.out_dir / recording.key)
            result.update(status="done", error=None)
        except Exception as exc:  # one recording's failure, whatever it is, must not stop the archive
            shutil.rmtree(tmp, ignore_errors=True)
            result.update(status="failed", error=one_line(exc))
        result["seconds"] = time.perf_counter() - started
        return result
