"""The streaming product end to end: `bonestream run` over real ZeroMQ sockets on loopback, real files.

Random weights at a tiny model input: these tests check delivery, accounting and files, never bone quality.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.cli import main
from pipeline.publish.outputs import LosslessOutput, MessageFactory, ZmqOutput
from pipeline.publish.publisher import LosslessSender, Publisher
from pipeline.publish.subscriber import LosslessReceiver, Subscriber
from pipeline.run import Pipeline, RunConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bonestream(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


@pytest.fixture(scope="module")
def mp4_reference(ultrabones: Path, tmp_path_factory) -> tuple[Path, Path]:
    mp4 = ultrabones / "sweep_clip_frames150-889_20fps.mp4"
    ref = tmp_path_factory.mktemp("ref") / "ref.json"
    args = ["calibrate", str(mp4), "--count", "3", "--input-size", "32x40", "--k", "3", "--sample-interval", "1"]
    assert main([*args, "--out", str(ref), "--weights", "random:0", "--no-progress"]) == 0
    return mp4, ref


def test_replay_of_the_shared_mp4_publishes_every_frame_once_in_order(mp4_reference, tmp_path: Path) -> None:
    mp4, ref = mp4_reference
    address = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(address, rcvhwm=1000)  # a test subscriber that never falls behind the HWM
    proc = subprocess.Popen(
        bonestream("run", str(mp4), "--reference", str(ref), "--weights", "random:0", "--publish", address,
                   "--wait-subscribers", "1", "--report", str(tmp_path / "report"), "--no-progress"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    headers = []
    try:
        while len(headers) < 740:
            msg = sub.recv(timeout=60)
            if msg is None:
                break
            headers.append(msg.header())
    finally:
        out, _ = proc.communicate(timeout=120)
        sub.close()
    assert proc.returncode == 0, out
    assert [h["frame_id"] for h in headers] == list(range(740))
    h = headers[100]
    assert h["schema"] == 1 and h["weights"] == "random:0" and h["random_weights"] is True
    assert h["mask"]["shape"] == [812, 950] and h["overlay"]["encoding"] == "jpeg"
    stamps = h["timestamps_ns"]
    assert stamps["captured"] <= stamps["inferred"] <= stamps["labelled"] <= stamps["published"]
    assert sub.counters()["malformed"] == 0 and sub.counters()["missed"] == 0
    assert "frames read 740, processed 740, published 740, failed 0" in out
    report = json.loads((tmp_path / "report" / "latency.json").read_text())
    assert report["frames_total"] == 740 and report["frames_measured"] == 720
    assert report["stages"]["end to end (captured -> published)"]["p99"] > 0
    assert (tmp_path / "report" / "latency_cdf.png").stat().st_size > 10_000


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_leaves_a_playable_recording(mp4_reference, tmp_path: Path, sig: signal.Signals) -> None:
    mp4, ref = mp4_reference
    record = tmp_path / "rec"
    proc = subprocess.Popen(
        bonestream("run", str(mp4), "--reference", str(ref), "--weights", "random:0", "--no-publish", "--record", str(record),
                   "--pace", "20", "--report", str(tmp_path / "report"), "--no-progress"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    index = record / "index.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not index.exists() or len(index.read_text().splitlines()) < 15):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "interrupted" in out
    ids = [json.loads(line)["frame_id"] for line in index.read_text().splitlines()]
    assert len(ids) >= 15 and ids == list(range(len(ids)))  # every frame read was recorded, once, in order
    with av.open(str(record / "us_overlay.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == len(ids)
    assert not list(record.glob(".*partial"))


def phantom_stream(make_segmenter, frames: int):
    """A small phantom source, a segmenter calibrated on it, and a free loopback address."""
    source = PhantomSource(PhantomConfig(height=64, width=80, n_frames=frames))
    seg = make_segmenter([source.phantom.frame(i)[0] for i in (0, frames // 2, frames - 1)])
    return source, seg, f"tcp://127.0.0.1:{free_port()}"


def test_lossless_channel_delivers_every_frame_to_a_slow_consumer(make_segmenter) -> None:
    source, seg, address = phantom_stream(make_segmenter, 30)
    sender = LosslessSender(address)
    received: list[int] = []

    def consume() -> None:
        with LosslessReceiver(address) as rx:
            while (msg := rx.recv(timeout=10)) is not None:
                received.append(msg.frame_id)
                time.sleep(0.03)  # slower than the pipeline
                if len(received) == 30:
                    return

    consumer = threading.Thread(target=consume)
    consumer.start()
    summary = Pipeline(source, seg, [LosslessOutput(sender)], RunConfig(make_message=MessageFactory(seg, "lossless"))).run()
    consumer.join(timeout=30)
    assert summary.published == 30 and received == list(range(30))


def test_live_headers_carry_drop_counts_and_slow_subscriber_does_not_stall(make_segmenter) -> None:
    source, seg, address = phantom_stream(make_segmenter, 60)
    publisher = Publisher(address)
    slow, fast = Subscriber(address), Subscriber(address, rcvhwm=1000)
    assert publisher.wait_for_subscribers(2, timeout=10)
    got_fast: list[int] = []

    def drain(sub: Subscriber, into: list[int] | None, delay: float) -> None:
        while (msg := sub.recv(timeout=3)) is not None:
            if into is not None:
                into.append(msg.frame_id)
            time.sleep(delay)

    threads = [threading.Thread(target=drain, args=(slow, None, 0.2)), threading.Thread(target=drain, args=(fast, got_fast, 0))]
    for t in threads:
        t.start()
    started = time.monotonic()
    summary = Pipeline(source, seg, [ZmqOutput(publisher)], RunConfig(live=True, make_message=MessageFactory(seg, "live"))).run()
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(timeout=20)
    slow.close()
    fast.close()
    assert elapsed < 0.2 * 60  # never paced by the 0.2 s/frame subscriber
    assert got_fast == sorted(set(got_fast)) and len(got_fast) == summary.published
    assert set(summary.dropped) == {"capture", "infer", "encode", "output:zmq"}
    assert summary.published + sum(summary.dropped.values()) == summary.read == 60
