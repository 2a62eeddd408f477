"""The live status line of run and record: on a terminal, rewritten in place; plain lines otherwise; off with
--no-progress. Random weights: plumbing only."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest
from pipeline.cli import main
from pipeline.publish.recorder import Recorder
from pipeline.publish.subscriber import Subscriber
from pipeline.status import StatusLine, record_status

SMALL = ["--input-size", "32x40", "--k", "3", "--sample-interval", "2", "--no-progress"]


def _run_with_terminal_stderr(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """``bonestream ARGS`` in process, its stderr a pseudo-terminal (as in a shell); what reached the terminal."""
    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        code = main(args)
    finally:
        monkeypatch.undo()
        terminal.close()
    chunks = []
    while select.select([master], [], [], 0.5)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_run_shows_a_status_line_on_a_terminal_and_none_with_no_progress(ultrabones: Path, tmp_path: Path, monkeypatch) -> None:
    ref = tmp_path / "ref.json"
    stills = sorted((ultrabones / "sweep_frames").glob("*.png"))[:2]
    assert main(["calibrate", *map(str, stills), "--out", str(ref), "--weights", "random:0", *SMALL]) == 0
    times = tmp_path / "times.txt"
    times.write_text("".join(f"{i / 10}\n" for i in range(80)))  # 10 fps, paced by the file
    common = ["run", str(ultrabones / "sweep_frames"), "--reference", str(ref), "--no-publish", "--timestamps", str(times),
              "--start", "2", "--max-frames", "8"]
    code, shown = _run_with_terminal_stderr([*common, "--report", str(tmp_path / "a")], monkeypatch)
    assert code == 0, shown
    summary = json.loads((tmp_path / "a" / "run_summary.json").read_text())
    assert summary["read"] == 8 and summary["range"] == {"start": 2, "stop": None, "max_frames": 8}
    assert json.loads((tmp_path / "a" / "latency.json").read_text())["pace"] == "timestamps"
    lines = [part.split("\x1b[K")[0] for part in shown.split("\r") if part.startswith("frames read")]
    assert lines and all("fps, latency p50" in line for line in lines)
    assert lines[-1].startswith("frames read 8, published 8,") and "dropped 0" in lines[-1]  # the final counts stay
    code, shown = _run_with_terminal_stderr([*common[:-1], "2", "--report", str(tmp_path / "b"), "--no-progress"], monkeypatch)
    assert code == 0 and "frames read" not in shown


def test_plain_lines_when_not_a_terminal_and_record_counts(tmp_path: Path) -> None:
    stream = io.StringIO()
    with Subscriber("tcp://127.0.0.1:59871") as rx, Recorder(tmp_path / "rec") as rec:
        with StatusLine(record_status(rx, rec), stream=stream, plain_interval_s=0.05):
            time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert lines and "\r" not in stream.getvalue()
    assert lines[0] == "frames received 0, recorded 0, missed 0, 0.0 fps"
    quiet = io.StringIO()
    with StatusLine(lambda: "x", stream=quiet, enabled=False, plain_interval_s=0.01):
        time.sleep(0.05)
    assert quiet.getvalue() == ""
