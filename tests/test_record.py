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
import zmq

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
    assert summary == {"frames": 60, "first": 0, "last": 59, "gaps": [], "duplicates": 0, "sequences": [[0, 59]], "video": "us_overlay.mp4", "video_frames": 60,
                       "video_segments": [{"file": "us_overlay.mp4", "frames": 60}]}
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [h["frame_id"] for h in index] == list(range(60)) and rx.missed == 0
    assert video_frames(tmp_path / "us_overlay.mp4") == 60
    mask = cv2.imread(str(tmp_path / index[59]["recorded"]["mask"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, frames[59].mask) and len(list((tmp_path / "masks").glob("us_*.png"))) == 60


def test_a_restarted_sender_never_overwrites_recorded_masks(tmp_path):
    ids = [0, 1, 2, 0, 1, 10**12, 10**12 + 2, 5]  # a restart, a leap ahead (new sequence, gap of 1 inside it), a restart
    with Recorder(tmp_path, fps=10) as rec:
        for i in ids:
            assert rec.write(make_message(i, overlay=None))
    summary = json.loads((tmp_path / "recording.json").read_text())["streams"]["us"]
    assert summary["frames"] == len(ids) == len(list((tmp_path / "masks").glob("*.png")))
    assert summary["sequences"] == [[0, 2], [0, 1], [10**12, 10**12 + 2], [5, 5]]
    assert summary["gaps"] == [[10**12 + 1, 10**12 + 1]] and summary["duplicates"] == 0
    index = [json.loads(line)["recorded"]["mask"] for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert len(set(index)) == len(ids) and index[3] == "masks/us_s1_000000.png"


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


KILLED_RECORDER = """
import os, signal, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from pipeline.publish.recorder import Recorder
from test_message import make_message
rec = Recorder(sys.argv[1], fps=20)
for i in range(12):
    rec.write(make_message(i, size=(48, 64), overlay="raw"))
os.kill(os.getpid(), signal.SIGKILL)  # no close(): as a power cut or kill -9 would leave it
"""


def test_a_killed_recording_keeps_every_frame_written(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    tests_dir = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", KILLED_RECORDER, str(out), str(tests_dir.parent), str(tests_dir)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    # the index lists what is on disk: frame 11's video frame was still in the muxer (it writes a frame when the
    # next one comes), so frame 11 is not listed (its mask is there)
    assert [h["frame_id"] for h in index] == list(range(11))
    assert len(list((out / "masks").glob("*.png"))) == 12
    assert not (out / "us_overlay.mp4").exists() and not (out / "recording.json").exists()  # nothing looks complete
    partial = next(out.glob(".*_overlay.mp4.partial"))
    with av.open(str(partial)) as container:  # fragmented at every frame: playable up to the kill
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= max(h["recorded"]["video_frame"] for h in index) + 1 == 11  # every listed frame plays


def test_a_size_change_mid_stream_starts_a_new_segment(tmp_path: Path) -> None:
    with Recorder(tmp_path / "rec") as rec:
        for i in range(6):
            rec.write(make_message(i, size=(48, 64) if i < 4 else (32, 40), overlay="raw"))
    summary = json.loads((tmp_path / "rec" / "recording.json").read_text())["streams"]["us"]
    assert summary["video_segments"] == [{"file": "us_overlay.mp4", "frames": 4}, {"file": "us_overlay_2.mp4", "frames": 2}]
    assert video_frames(tmp_path / "rec" / "us_overlay.mp4") == 4 and video_frames(tmp_path / "rec" / "us_overlay_2.mp4") == 2
    index = [json.loads(line)["recorded"] for line in (tmp_path / "rec" / "index.jsonl").read_text().splitlines()]
    assert [(r["video"], r["video_frame"]) for r in index] == [("us_overlay.mp4", i) for i in range(4)] + [("us_overlay_2.mp4", i) for i in range(2)]


def test_a_flood_of_stream_ids_is_bounded(tmp_path: Path) -> None:
    from pipeline.publish.recorder import MAX_STREAMS

    with Recorder(tmp_path / "rec") as rec:
        taken = [rec.write(make_message(0, stream_id=f"s{i}", overlay=None)) for i in range(MAX_STREAMS + 10)]
    assert taken == [True] * MAX_STREAMS + [False] * 10 and rec.refused == 10
    assert len(rec.summary()["streams"]) == MAX_STREAMS


def test_a_stalled_lossless_output_recovers_when_its_consumer_comes(tmp_path: Path) -> None:
    """A consumer that was not there costs one timeout; once it connects, frames go to it again without waiting."""
    from pipeline.capture.frame import Frame
    from pipeline.publish.outputs import LosslessOutput
    from pipeline.run import Result

    sender = LosslessSender("tcp://127.0.0.1:*", linger=0.5)
    output = LosslessOutput(sender, "none", timeout=0.3)

    def result(i: int) -> Result:
        r = Result(Frame(i, np.zeros((24, 32), np.uint8), f"f{i}", None, 0))
        r.message = make_message(i, overlay=None)
        return r

    with pytest.raises(SendTimeout):
        output.write(result(0))
    assert output.stalled
    started = time.monotonic()
    with pytest.raises(SendTimeout):
        output.write(result(1))  # stalled: fails at once, no second wait
    assert time.monotonic() - started < 0.2
    with LosslessReceiver(sender.socket.getsockopt_string(zmq.LAST_ENDPOINT)) as rx:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                output.write(result(2))
                break
            except SendTimeout:
                time.sleep(0.05)  # the connection is being made
        assert not output.stalled
        assert rx.recv(timeout=5).frame_id == 2
    output.close()
