"""DIR/manifest.jsonl: one JSON line per finished attempt, appended and fsync'd, so a re-run knows what is done."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.publish.files import named

MANIFEST = "manifest.jsonl"
RECORD = "recording.json"  # in each output folder: the content hash and reference the folder was made from


@dataclass
class Manifest:
    """The attempts of earlier runs and this one. Only the driver writes it (one writer, no interleaved lines)."""

    path: Path
    lines: list[dict[str, Any]] = field(default_factory=list)
    unreadable: int = 0  # a torn last line (a power cut mid-append) is ignored and counted
    torn: bool = False  # the file ends mid-line: the next line starts on a new one
    _done: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (sha256, reference) -> last done line

    @classmethod
    def open(cls, out_dir: Path) -> "Manifest":
        manifest = cls(out_dir / MANIFEST)
        if manifest.path.is_file():
            data = manifest.path.read_bytes()
            manifest.torn = bool(data) and not data.endswith(b"\n")
            for text in data.decode("utf-8", errors="replace").splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    manifest.unreadable += 1
                    continue
                if isinstance(line, dict):
                    manifest._note(line)
                else:
                    manifest.unreadable += 1
        return manifest

    def done(self, sha256: str, reference_id: str) -> dict[str, Any] | None:
        """The done line for this content and reference whose output folder still holds what it made, if any."""
        line = self._done.get((sha256, reference_id))
        return line if line is not None and holds(self.path.parent / str(line.get("key")), sha256, reference_id) else None

    def append(self, line: dict[str, Any]) -> None:
        data = ("\n" if self.torn else "") + json.dumps(line, allow_nan=False) + "\n"
        try:
            with open(self.path, "ab") as f:
                f.write(data.encode())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise named(exc, self.path) from None
        self.torn = False
        self._note(line)

    def _note(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        if line.get("status") == "done":
            self._done[(str(line.get("sha256")), str(line.get("reference")))] = line


def holds(folder: Path, sha256: str, reference_id: str) -> bool:
    """``folder`` is a complete output of this content and reference (recording.json is published with it)."""
    try:
        record = json.loads((folder / RECORD).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("sha256") == sha256 and record.get("reference") == reference_id
