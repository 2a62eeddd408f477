"""Lossless channel, recorder outputs, and the record/view/keys commands (record also as a real subprocess)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.publish.publisher import LosslessSender, Publisher, SendTimeout
from pipeline.publish.recorder import Recorder, RecordError
from pipeline.publish.subscriber import LosslessReceiver
from pipeline.publish.viewer import RED, annotate
from test_message import make_message

LOCAL = "tcp://127.0.0.1:0"
REPO = Path(__file__).resolve().parents[1]


def video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_slow_lossless_recorder_gets_every_frame_exactly_once(tmp_path):
    frames = [make_message(i, size=(256, 256), overlay="raw") for i in range(60)]  # ~260 KB each: beyond socket buffers
    with LosslessSender(LOCAL) as sender:
        # sending starts before the recorder connects: PUSH waits for it instead of dropping
        feeder = threading.Thread(target=lambda: [sender.send(m, timeout=20) for m in frames])
        feeder.start()
        with LosslessReceiver(sender.address) as rx, Recorder(tmp_path, fps=10) as rec:
            while rec.frames < 60 and (msg := rx.recv(timeout=5)) is not None:
                rec.write(msg)
                time.sleep(0.005)
        feeder.join()
    summary = json.loads((tmp_path / "recording.json").read_text())["streams"]["us"]
    assert summary == {"frames": 60, "first": 0, "last": 59, "gaps": [], "duplicates": 0, "video": "us_overlay.mp4", "video_frames": 60}
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [h["frame_id"] for h in index] == list(range(60)) and rx.missed == 0
    assert video_frames(tmp_path / "us_overlay.mp4") == 60
    mask = cv2.imread(str(tmp_path / index[59]["recorded"]["mask"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, frames[59].mask) and len(list((tmp_path / "masks").glob("us_*.png"))) == 60


def test_lossless_send_times_out_without_a_consumer():
    with LosslessSender(LOCAL, linger=0) as sender, pytest.raises(SendTimeout, match="frame 0"):
        sender.send(make_message(0), timeout=0.05)


def test_stream_without_overlays_is_recorded_as_masks_only(tmp_path):
    with Recorder(tmp_path) as rec:
        for i in (0, 1, 4):
            rec.write(make_message(i, overlay=None))
    summary = json.loads((tmp_path / "recording.json").read_text())["streams"]["us"]
    assert summary["video"] is None and summary["gaps"] == [[2, 3]]
    assert not list(tmp_path.glob("*.mp4")) and len(list((tmp_path / "masks").iterdir())) == 3
    with pytest.raises(RecordError, match="already holds a recording"):
        Recorder(tmp_path)


def test_sigint_to_record_command_leaves_a_playable_mp4(tmp_path):
    out = tmp_path / "rec"
    with Publisher(LOCAL) as pub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "record", pub.address, "--out", str(out)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            assert pub.wait_for_subscribers(1, timeout=30), "record did not subscribe"
            index, frame_id, deadline = out / "index.jsonl", 0, time.monotonic() + 30
            while (not index.exists() or len(index.read_text().splitlines()) < 10) and time.monotonic() < deadline:
                pub.send(make_message(frame_id, size=(64, 96)))
                frame_id += 1
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)  # while frames are still arriving
            for i in range(frame_id, frame_id + 5):
                pub.send(make_message(i, size=(64, 96)))
            output, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, output
    recorded = [json.loads(line) for line in index.read_text().splitlines()]
    assert len(recorded) >= 10 and f"recorded {len(recorded)} frames" in output
    assert video_frames(out / "us_overlay.mp4") == len(recorded)
    assert not list(out.glob(".*partial"))


def test_record_command_without_frames_fails_cleanly(tmp_path, capsys):
    with Publisher(LOCAL) as pub:  # bound, never sends
        assert main(["record", pub.address, "--out", str(tmp_path / "r"), "--timeout", "0.3"]) == 2
    assert "no frames received from tcp://127.0.0.1:" in capsys.readouterr().err
    assert main(["record", "tcp://127.0.0.1:1", "--out", str(tmp_path / "s"), "--curve-client", "x"]) == 2
    assert "--curve-client and --curve-server go together" in capsys.readouterr().err


def test_view_headless_snapshot(tmp_path):
    png = tmp_path / "view.png"
    result = {}
    with Publisher(LOCAL) as pub:
        argv = ["view", pub.address, "--headless-snapshot", str(png), "--max-frames", "3"]
        viewer = threading.Thread(target=lambda: result.update(rc=main(argv)))
        viewer.start()
        assert pub.wait_for_subscribers(1, timeout=10)
        frame_id = 0
        while viewer.is_alive() and frame_id < 1000:
            pub.send(make_message(frame_id))
            frame_id += 1
            viewer.join(0.01)
    assert result["rc"] == 0
    image = cv2.imread(str(png))
    assert image.shape[0] > 24 and image.shape[1] >= 480  # frame plus status band


def test_annotate_draws_status_below_the_frame():
    msg = make_message(3, overlay=None)
    msg.received_ns = msg.timestamps_ns["published"] + 1_000_000
    out = annotate(msg, 29.5, {"missed": 1, "skipped": 2, "malformed": 0})
    assert np.array_equal(out[:24, :32, 0], msg.mask)  # no overlay: the mask itself, untouched by text
    band = out[24:]
    assert (band == RED).all(axis=-1).any()  # random weights are announced in red
    msg.random_weights = False
    assert not (annotate(msg, 0.0, {"missed": 0, "skipped": 0, "malformed": 0})[24:] == RED).all(axis=-1).any()


def test_keys_command(tmp_path, capsys):
    assert main(["keys", "--out", str(tmp_path), "--name", "scanner"]) == 0
    assert (tmp_path / "scanner.key").exists() and (tmp_path / "scanner.key_secret").stat().st_mode & 0o777 == 0o600
    assert main(["keys", "--out", str(tmp_path), "--name", "scanner"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
