"""The README's Python API snippet runs offline as written: a reference calibrated with random weights, a frame."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_snippet_runs_offline(ultrabones: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    text = README.read_text()
    snippet = re.search(r"Python API:\s*```python\n(.*?)```", text, re.S).group(1)
    still = sorted((ultrabones / "sweep_frames").glob("*.png"))[0]
    shutil.copy(still, tmp_path / "frame.png")
    monkeypatch.chdir(tmp_path)
    args = ["calibrate", "frame.png", "--out", "exam-ref.json", "--weights", "random:0", "--input-size", "32x40", "--k", "2", "--sample-interval", "1", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    exec(compile(snippet, "README.md Python API", "exec"), {})  # no weights named: the reference's random:0
    printed = capsys.readouterr().out.split()
    assert printed[:6] == ["(811,", "950)", "(811,", "950,", "3)", "(4,"]  # mask, overlay (RGB), 4 x 5 margins
