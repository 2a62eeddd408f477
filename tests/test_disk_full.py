"""A disk that refuses writes: one clear line, no traceback, and every frame written before stays readable.

Two real refusals by the kernel: a tiny tmpfs that fills up (ENOSPC; needs permission to mount, else skipped) and a
file size limit (RLIMIT_FSIZE -> EFBIG, for any user). Both run the real commands as subprocesses.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import pytest

from pipeline.cli import main
from pipeline.publish.publisher import LosslessSender, SendTimeout
from test_message import make_message

REPO = Path(__file__).resolve().parents[1]
LIMIT = 32 * 1024


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def small_disk(request, tmp_path):
    """(folder whose writes run out of room, preexec_fn for the writing process)."""
    if request.param == "file-size-limit":

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

        yield tmp_path, limit
        return
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the file-size-limit case covers the class")
    try:
        yield disk, None
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def readable_index(folder: Path) -> list[dict]:
    """Every complete index line (a full disk may cut the last one short)."""
    lines = (folder / "index.jsonl").read_text().split("\n")
    entries = []
    for i, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            assert i == len(lines) - 1, f"index line {i} of {len(lines)} is damaged"
    return entries


def test_record_stops_with_one_line_and_keeps_what_it_wrote(small_disk) -> None:
    disk, limit = small_disk
    out = disk / "rec"
    frames = [make_message(i, size=(96, 128), overlay="raw") for i in range(400)]
    with LosslessSender("tcp://127.0.0.1:0") as sender:
        proc = subprocess.Popen(
            command("record", sender.address, "--lossless", "--out", str(out), "--timeout", "20"),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
        )

        def feed() -> None:  # until the recorder has exited, then stop: nothing may touch the socket after it closes
            for m in frames:
                while proc.poll() is None:
                    try:
                        sender.send(m, timeout=0.5)
                        break
                    except SendTimeout:
                        continue

        feeder = threading.Thread(target=feed)
        feeder.start()
        _, err = proc.communicate(timeout=120)
        feeder.join(timeout=10)
    assert proc.returncode == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ("No space left on device" in err or "File too large" in err) and "recording of frame" in err
    index = readable_index(out)
    assert 0 < len(index) < len(frames)
    for entry in index:  # every frame the index lists is on disk: its mask, and its place in a playable video
        assert (out / entry["recorded"]["mask"]).stat().st_size > 0
    video = next(out.glob("*us_overlay.mp4*"))
    with av.open(str(video)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded >= max(e["recorded"]["video_frame"] for e in index) + 1


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory, ultrabones) -> Path:
    ref = tmp_path_factory.mktemp("ref") / "ref.json"
    frames = [str(p) for p in sorted((ultrabones / "sweep_frames").glob("*.png"))[:2]]
    argv = ["calibrate", *frames, "--input-size", "32x40", "--k", "2", "--sample-interval", "1", "--out", str(ref)]
    assert main([*argv, "--weights", "random:0", "--no-progress"]) == 0
    return ref


def test_segment_on_a_full_disk_is_one_line(small_disk, sweep_reference, ultrabones) -> None:
    disk, limit = small_disk
    common = ["--weights", "random:0", "--no-progress"]
    result = subprocess.run(
        command("segment", str(ultrabones / "sweep_frames"), "--reference", str(sweep_reference), "--out", str(disk / "seg"), *common),
        cwd=REPO, capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # (after the random-weights notice)
    assert last.startswith("bonestream segment: error: ") and str(disk / "seg") in last, result.stderr


@pytest.mark.parametrize("small_disk", ["tmpfs"], indirect=True)  # a file size limit would also refuse the latency plot
def test_run_goes_on_when_its_recording_disk_fills(small_disk, sweep_reference, ultrabones, tmp_path) -> None:
    disk, limit = small_disk
    report = tmp_path / "report"
    argv = ["run", str(ultrabones / "sweep_frames"), "--reference", str(sweep_reference), "--no-publish", "--record", str(disk / "rec")]
    result = subprocess.run(
        command(*argv, "--report", str(report), "--weights", "random:0", "--no-progress"),
        cwd=REPO, capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    stops = [line for line in result.stderr.splitlines() if "output record" in line]
    assert len(stops) == 1 and "stopped" in stops[0], result.stderr  # one line, not one per frame
    summary = json.loads((report / "run_summary.json").read_text())
    record = summary["outputs"]["record"]
    assert record["written"] + record["failed"] == summary["read"] == 80 and record["failed"] > 0
    errors = summary["output_errors"]  # the failed frame, the frames after it as one range, the failed close
    assert f"record frames {record['written'] + 1}-79: stopped: no room on disk since frame {record['written']}" in errors
    assert len(errors) <= 3 and all(e.startswith("record ") for e in errors), errors
    assert summary["published"] == 0 or summary["processed"] == 80  # the frame path went on without the recording
    index = readable_index(disk / "rec")  # what it lists is on disk (the last frames may be unlisted, never the reverse)
    assert len(index) <= record["written"] and all((disk / "rec" / e["recorded"]["mask"]).exists() for e in index)
