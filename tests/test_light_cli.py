"""The command line's help loads no heavy library, and a random-weights command says so once.

Both go through ``python -m pipeline.cli`` in a fresh interpreter: what one test imported cannot hide what
another imports, and the notice is said once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.weights import WeightsIdentity
from pipeline.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "cv2", "av", "faiss", "onnxruntime", "matplotlib")


def _cli(*args: str, cwd: Path = ROOT, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *extra, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _imported(importtime: str) -> set[str]:
    """Top-level packages named in ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = (line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if line.startswith("import time:"))
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("command", [(), *((name,) for name in COMMANDS), ("experiment", "noise")], ids=" ".join)
def test_help_imports_no_heavy_library(command: tuple[str, ...]) -> None:
    result = _cli(*command, "--help", extra=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: bonestream" in result.stdout
    imported = _imported(result.stderr)
    assert "pipeline" in imported  # the import log is read as it should be
    assert not imported & set(HEAVY), f"bonestream {' '.join(command)} --help imported {sorted(imported & set(HEAVY))}"


def test_a_random_weights_run_says_so_once(tmp_path: Path) -> None:
    """One stderr line says the weights are random (the loader's notice, said once per process however often a
    command loads the model); stdout names the weights without repeating it; the reference keeps its stamp."""
    notice = WeightsIdentity(kind="random", seed=0).warning
    ref = tmp_path / "ref.json"
    result = _cli("calibrate", "phantom:2", "--count", "2", "--weights", "random:0", "--input-size", "32x40", "--k", "2",
                  "--out", str(ref), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if "RANDOM" in line] == [notice]
    assert "RANDOM" not in result.stdout and "weights: random:0" in result.stdout
    assert notice in ref.read_text()
