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
from calibration.reference import Reference
from models.loader import load_model
from pipeline.archive.manifest import RECORD
from pipeline.capture.open import frame_size, open_source
from pipeline.infer.select import BackendSpec
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
        self.reference = Reference.load(config.reference)
        self.model, self.identity = load_model(self.reference.weights_spec() if config.weights is None else config.weights, progress=False)
        self.reference.check_weights(self.identity.label, config.reference)
        self.spec = BackendSpec(config.backend, config.device, config.precision, config.batch_size)
        self._segmenters: dict[tuple[int, int], BoneSegmenter] = {}
        self.seg = self._segmenter(tuple(self.reference.geometry.frame_size))  # built and warmed up before any recording
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def _segmenter(self, size: tuple[int, int], where: str = "reference") -> BoneSegmenter:
        """The engine for frames of ``size``: the reference fitted to it by the reuse rule (Geometry.at_frame_size;
        an exam whose encoder padded a row is served, one the imaging area does not fit is refused), built once."""
        if size not in self._segmenters:
            reference = self.reference.at_frame_size(size, where)
            self._segmenters[size] = BoneSegmenter.from_model(reference, self.model, self.identity, self.spec, refine=self.config.refine)
        return self._segmenters[size]

    def pid(self) -> int:
        return os.getpid()

    def process(self, recording: Recording) -> dict[str, Any]:
        """Masks, overlay video and summary.json into DIR/.partial/, then published as DIR/<key>/ with recording.json.
        A recording that fails is reported with its error (its partial output removed); the worker goes on."""
        started = time.perf_counter()
        tmp = self.out_dir / PARTIAL / uuid.uuid4().hex
        result: dict[str, Any] = {"worker": self.name, "frames": 0}
        try:
            with open_source(recording.path) as source:  # closed after each recording: a worker lives for thousands
                size = frame_size(source)
                seg = self.seg if size is None else self._segmenter(size, str(recording.path))
                summary = json.loads(segment_sources(
                    seg, [source], tmp, batch_size=self.config.batch_size, overlay=self.config.overlay, progress=False,
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
