"""What an archive run did: counts, failures with their errors, throughput overall and per worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluate import RANDOM_WEIGHTS_NOTE
from pipeline.publish.files import write_json_atomic

SUMMARY = "archive_summary.json"


@dataclass
class ArchiveReport:
    """Filled as results come in; ``frames_per_s`` counts this run's processed frames over its processing wall time."""

    reference: str
    weights: str
    random_weights: bool
    workers: int = 0  # started: one per recording to do, up to --workers
    recordings: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    retried: int = 0  # attempts repeated because their worker process died
    workers_lost: int = 0
    manifest_unreadable: int = 0  # lines of the manifest that did not parse (a torn last line): ignored
    startup_s: float = 0.0  # Ray and the workers' models, before the first recording
    wall_s: float = 0.0
    per_worker: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, line: dict[str, Any]) -> None:
        (self.done if line["status"] == "done" else self.failed).append(line)
        if line.get("worker"):
            w = self.per_worker.setdefault(line["worker"], {"recordings": 0, "frames": 0, "busy_s": 0.0})
            w["recordings"] += 1
            w["frames"] += line["frames"]
            w["busy_s"] += line["seconds"] or 0.0

    @property
    def frames(self) -> int:
        return sum(line["frames"] for line in self.done)

    @property
    def frames_per_s(self) -> float | None:
        return self.frames / self.wall_s if self.wall_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        workers = {name: {**w, "frames_per_s": w["frames"] / w["busy_s"] if w["busy_s"] > 0 else None} for name, w in self.per_worker.items()}
        return {
            "reference": self.reference,
            "weights": self.weights,
            "random_weights": self.random_weights,
            "note": RANDOM_WEIGHTS_NOTE if self.random_weights else "outputs of the DINO weights named in 'weights'",
            "recordings": self.recordings,
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "frames": self.frames,
            "startup_s": self.startup_s,
            "wall_s": self.wall_s,
            "frames_per_s": self.frames_per_s,
            "workers": self.workers,
            "retried_after_worker_loss": self.retried,
            "workers_lost": self.workers_lost,
            "manifest_unreadable_lines": self.manifest_unreadable,
            "per_worker": workers,
            "failures": [{"key": f["key"], "source": f["source"], "error": f["error"]} for f in self.failed],
            "skipped_recordings": self.skipped,
        }

    def write(self, out_dir: Path) -> Path:
        path = out_dir / SUMMARY
        write_json_atomic(path, self.to_dict())
        return path

    def table(self) -> str:
        fps = self.frames_per_s
        rows = [
            ("recordings", self.recordings), ("done", len(self.done)), ("skipped (done before)", len(self.skipped)),
            ("failed", len(self.failed)), ("frames", self.frames), ("wall s", f"{self.wall_s:.1f}"),
            ("frames/s", "-" if fps is None else f"{fps:.1f}"), ("workers lost / retried", f"{self.workers_lost} / {self.retried}"),
        ]
        lines = [f"{name:<24}{value}" for name, value in rows]
        for name, w in self.to_dict()["per_worker"].items():
            rate = "-" if w["frames_per_s"] is None else f"{w['frames_per_s']:.1f}"
            lines.append(f"  worker {name}: {w['recordings']} recordings, {w['frames']} frames, {rate} frames/s")
        lines += [f"  FAILED {f['key']}: {f['error']}" for f in self.failed]
        if self.random_weights:
            lines.insert(0, RANDOM_WEIGHTS_NOTE)
        return "\n".join(lines)
