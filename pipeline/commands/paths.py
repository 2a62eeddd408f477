"""Output paths checked before any model is loaded or frame read: a bad one is one line, not minutes of work lost."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from models.errors import BonestreamError


class OutputPathError(BonestreamError):
    """An output path that cannot be written as asked."""


def _writable_ancestor(path: Path) -> Path:
    """The nearest existing folder at or above ``path`` (where a missing path would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(path: Path | None, what: str) -> None:
    """``path`` is, or can be created as, a writable folder."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path}: exists and is not a folder")
    base = _writable_ancestor(path)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: {base} is not writable")


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be written as a file (its folder exists or can be made, and it is not a folder)."""
    if path.is_dir():
        raise OutputPathError(f"{what} {path}: is a folder, not a file")
    check_output_dir(path.parent, what)


def check_new_recording(path: Path | None, what: str) -> None:
    """A folder for a new recording: writable and not holding one already (a recording is never overwritten)."""
    from pipeline.publish.recorder import Recorder, RecordError  # PyAV and OpenCV: loaded on use, not for --help

    check_output_dir(path, what)
    if path is not None:
        try:
            Recorder.refuse_existing(path)
        except RecordError as exc:
            raise OutputPathError(f"{what}: {exc}") from None


def check_fresh_results(path: Path | None, what: str, owned: Sequence[str], overwrite: bool) -> None:
    """A results folder holds one run: a previous run's files (``owned`` patterns) are refused, so old masks can
    never pass for new ones (evaluate would score them), unless the user says ``--overwrite`` (the job then removes
    them once its sources have opened)."""
    from pipeline.publish.files import results_in

    found = results_in(path, owned) if path is not None else []
    if found and not overwrite:
        raise OutputPathError(
            f"{what} {path} holds a previous run's results ({found[0].relative_to(path)} and {len(found) - 1} more); "
            "choose another folder, or pass --overwrite to replace them"
        )
