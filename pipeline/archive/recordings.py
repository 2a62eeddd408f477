"""What an archive holds: the recordings under the inputs, each with a stable key and the sha256 of its content."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from models.errors import BonestreamError
from models.weights import file_sha256
from pipeline.capture.dicom import is_dicom
from pipeline.capture.video import VIDEO_SUFFIXES


class ArchiveInputError(BonestreamError):
    """An input that is not a recording or a folder of them."""


@dataclass(frozen=True)
class Recording:
    """One video or DICOM cine. ``key`` names its output folder: the input's name and the path below it, so it stays
    the same from run to run (and never depends on which other files exist)."""

    key: str
    path: Path
    sha256: str = ""


def is_recording(path: Path) -> bool:
    """A video by its suffix, or a DICOM file (.dcm/.dicom, or the DICM marker: scanners often write no suffix)."""
    return path.suffix.lower() in VIDEO_SUFFIXES or is_dicom(path)


def _walk(folder: Path, skip: Path) -> Iterable[Path]:
    """Files under ``folder`` in name order, hidden ones and the output folder left out."""
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
        yield from (here / f for f in sorted(files) if not f.startswith("."))


def find_recordings(inputs: Sequence[str | Path], out_dir: Path) -> list[Recording]:
    """Every video and DICOM file under the inputs (folders are walked; files are taken as given). A folder of
    single-frame DICOM files is not one series here: each file is a recording, as pipeline.capture reads it."""
    skip = out_dir.resolve()
    found: dict[str, Recording] = {}
    for spec in map(Path, inputs):
        if spec.is_dir():
            base = spec.resolve().name or "root"
            paths = [(f"{base}/{p.relative_to(spec).as_posix()}", p) for p in _walk(spec, skip) if is_recording(p)]
            if not paths:
                raise ArchiveInputError(f"{spec}: folder holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) or DICOM files")
        elif spec.is_file():
            if not is_recording(spec):
                raise ArchiveInputError(f"{spec}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a DICOM file")
            paths = [(spec.name, spec)]
        else:
            raise ArchiveInputError(f"{spec}: no such file or folder")
        for key, path in paths:
            if key in found and found[key].path.resolve() != path.resolve():
                raise ArchiveInputError(f"{path} and {found[key].path} would share the output folder {key}; pass their folders under different names")
            found[key] = Recording(key, path.resolve())
    return list(found.values())


def hashed(recordings: Sequence[Recording], *, progress: bool = True) -> list[Recording]:
    """The recordings with their content sha256: what the manifest knows them by, wherever they are moved."""
    out = []
    for rec in tqdm(recordings, desc="hashing", unit="recording", disable=not progress):
        try:
            out.append(Recording(rec.key, rec.path, file_sha256(rec.path)))
        except OSError as exc:
            raise ArchiveInputError(f"{rec.path}: cannot be read ({exc.strerror or exc})") from None
    return out
