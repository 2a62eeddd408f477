"""What the command line promises around its work: ``--help`` loads no heavy library; ``bench`` writes where it runs
(never into the repository's committed results) and stamps its plots; random weights are said once, on stderr.

The commands run as ``python -m pipeline.cli`` in a fresh interpreter, as a user runs them: what one test imported
cannot hide what another imports, and the notice is said once per process. The bench run is tiny (torch fp32
batch 1, 2 frames at 32x40, no baseline, no streams, random weights): it checks where results go and what they
say, not latency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from benchmarks.report import write_plots
from models.weights import WeightsIdentity
from pipeline.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "cv2", "av", "faiss", "onnxruntime", "matplotlib")


def cli(*args: str, cwd: Path = ROOT, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli ARGS`` in a fresh interpreter, this checkout first on its path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *extra, "-m", "pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _imported(importtime: str) -> set[str]:
    """Top-level packages named in ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = (line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if line.startswith("import time:"))
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("command", [(), *((name,) for name in COMMANDS), ("experiment", "noise")], ids=" ".join)
def test_help_imports_no_heavy_library(command: tuple[str, ...]) -> None:
    result = cli(*command, "--help", extra=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: bonestream" in result.stdout
    imported = _imported(result.stderr)
    assert "pipeline" in imported  # the import log is read as it should be
    assert not imported & set(HEAVY), f"bonestream {' '.join(command)} --help imported {sorted(imported & set(HEAVY))}"


TINY = ["--device", "cpu", "--backends", "torch", "--precisions", "fp32", "--batch-sizes", "1", "--frames", "2", "--warmup", "0",
        "--input-size", "32x40", "--baseline-frames", "0", "--streams", "0", "--weights", "random:0"]


def _red_top(png: Path) -> int:
    """Red stamp pixels in the figure's top strip (write_figure draws the stamp there)."""
    image = cv2.imread(str(png))
    b, g, r = (image[:20, :, c].astype(int) for c in range(3))
    return int(((r > 180) & (g < 110) & (b < 110)).sum())


def _committed() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (ROOT / "benchmarks" / "results").rglob("*") if p.is_file()}


def test_bench_writes_here_stamps_its_plots_and_says_random_once(tmp_path: Path) -> None:
    before = _committed()
    result = cli("bench", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["bench.json", "bench.md", "bench_latency.png", "bench_stages.png", "bench_throughput.png"]
    assert _committed() == before  # nothing in benchmarks/results was touched

    notice = WeightsIdentity(kind="random", seed=0).warning
    assert [line for line in result.stderr.splitlines() if "RANDOM" in line] == [notice]  # said once, on stderr
    assert "RANDOM WEIGHTS" in (tmp_path / "bench.md").read_text()  # the printed table and the files keep their stamp
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["meta"]["weights"] == "random:0" and doc["meta"]["weights_warning"] == notice
    assert doc["meta"]["settings"]["clip"] == "None"  # the default clip is looked up at run time, never stored as a path
    for png in tmp_path.glob("*.png"):
        assert _red_top(png) > 30, png.name

    # the same plots from non-random weights carry no stamp: the red is the stamp, not the plot
    doc["meta"]["weights_warning"] = None
    assert [_red_top(p) for p in write_plots(doc, tmp_path / "plain", "bench")] == [0, 0, 0]


def test_bench_refuses_a_missing_clip_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *TINY, "--clip", str(tmp_path / "nope.mp4")]) == 2
    assert f"--clip {tmp_path / 'nope.mp4'}: no such video file" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
