"""Many probes, one process, one engine: several streams through one batching stage (random weights, tiny input).

These tests check delivery, accounting, batching and isolation between streams, never bone quality.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
import pytest
import torch

from pipeline.capture.frame import Frame, Source
from pipeline.capture.images import ImageSource
from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.capture.video import VideoSource
from pipeline.cli import main
from pipeline.commands.sources import StreamSpec, read_sources_file, with_ids
from pipeline.infer.select import BackendSpec
from pipeline.publish.outputs import MessageFactory, ZmqOutput
from pipeline.publish.publisher import Publisher, SharedSender
from pipeline.publish.subscriber import Subscriber
from pipeline.run import Pipeline, RunConfig, Stream
from pipeline.segment.batches import build_static_batches, static_sizes

REPO = Path(__file__).resolve().parents[1]

H, W = 64, 80
PHANTOM = PhantomConfig(height=H, width=W, n_frames=12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engines(make_segmenter, model, random_identity):
    """Torch engines at static batches 1 and 2 for one phantom reference (32x40 input, k = 3)."""
    ph = PhantomSource(PHANTOM).phantom
    seg = make_segmenter([ph.frame(i)[0] for i in (0, 6, 11)])
    return build_static_batches(model, random_identity, seg.reference, BackendSpec("torch", "cpu", "fp32", 2))


def write_mp4(path: Path, frames: int) -> Path:
    ph = PhantomSource(PhantomConfig(height=H, width=W, n_frames=frames, seed=3)).phantom
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(ph.frame(i)[0], format="gray")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def image_folder(folder: Path, frames: int, corrupt: int | None = None) -> Path:
    """PNG frames (OpenCV); frame ``corrupt`` is a truncated file, so the source fails there, mid-run."""
    folder.mkdir()
    ph = PhantomSource(PhantomConfig(height=H, width=W, n_frames=frames, seed=5)).phantom
    for i in range(frames):
        path = folder / f"f{i:03d}.png"
        cv2.imwrite(str(path), ph.frame(i)[0])
        if i == corrupt:
            path.write_bytes(path.read_bytes()[:40])
    return folder


def test_static_batch_sizes_and_the_engine_picked(engines) -> None:
    assert static_sizes(1) == (1,) and static_sizes(6) == (1, 2, 4, 6) and static_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert engines.sizes == (1, 2) and [engines.for_frames(n).batch for n in (1, 2, 3)] == [1, 2, 2]


def test_three_replay_sources_one_run_each_on_its_own_topic(engines, tmp_path: Path) -> None:
    sources = [
        VideoSource(str(write_mp4(tmp_path / "left.mp4", 10))),
        ImageSource([str(image_folder(tmp_path / "right", 9, corrupt=5))]),
        PhantomSource(PHANTOM),
    ]
    ids = ["left", "right", "phantom"]
    address = f"tcp://127.0.0.1:{free_port()}"
    publisher = SharedSender(Publisher(address, sndhwm=1000), users=3)
    sub = Subscriber(address, rcvhwm=1000)
    assert publisher.wait_for_subscribers(1, timeout=30)
    received: dict[str, list[int]] = {i: [] for i in ids}
    done = threading.Event()

    def listen() -> None:
        while not done.is_set() or sub.socket.poll(1000):
            msg = sub.recv(timeout=0.5)
            if msg is not None:
                received[msg.stream_id].append(msg.frame_id)

    listener = threading.Thread(target=listen)
    listener.start()
    config = RunConfig(max_batch_delay_ms=20)
    streams = [Stream(s, engines, [ZmqOutput(publisher)], config, make_message=MessageFactory(engines.first, sid)) for s, sid in zip(sources, ids)]
    pipeline = Pipeline.of_streams(streams, config)
    try:
        pipeline.run()
    finally:
        done.set()
        listener.join(timeout=60)
        sub.close()
    left, right, phantom = pipeline.summaries
    # every frame of every stream, by its own ids, on its own topic; the failing stream stopped only itself
    assert received == {"left": list(range(10)), "right": list(range(5)), "phantom": list(range(12))}
    assert (left.read, left.published, phantom.read, phantom.published, right.read, right.published) == (10, 10, 12, 12, 5, 5)
    assert not left.failed and not phantom.failed
    assert [f["stage"] for f in right.failed] == ["capture"] and "f005.png" in right.failed[0]["error"]
    assert sub.counters()["malformed"] == 0
    # one batching stage: engine calls held frames of several streams, every frame counted once
    assert max(pipeline.batches) > 1 and sum(n * c for n, c in pipeline.batches.items()) == 27
    assert [sum(s.batches.values()) for s in pipeline.summaries] == [10, 5, 12]
    assert all(len(s.latency) == s.published for s in pipeline.summaries)


class OneAtATime(Source):
    """Hands out its next frame only after the previous one was published: an engine call can never fill up, so
    the run finishes only if a partial batch waits a bounded time."""

    live = False

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.name = self.stem = "one-at-a-time"
        self.fps = 20.0
        self.published = threading.Event()
        self.waited_out = 0

    def __iter__(self) -> Iterator[Frame]:
        for i, image in enumerate(self.frames):
            if i and not self.published.wait(60):
                self.waited_out += 1
            self.published.clear()
            yield Frame(i, image, f"f{i}", i / self.fps, time.monotonic_ns())


def test_a_partial_batch_waits_at_most_the_delay(engines) -> None:
    ph = PhantomSource(PHANTOM).phantom
    source = OneAtATime([ph.frame(i)[0] for i in range(4)])
    config = RunConfig(max_batch_delay_ms=50)
    pipeline = Pipeline.of_streams([Stream(source, engines, [], config)], config, on_result=lambda r: source.published.set())
    summary = pipeline.run()
    assert summary.published == 4 and source.waited_out == 0
    assert dict(pipeline.batches) == {1: 4}  # each call ran alone on the 1-frame engine, the batch of 2 never filled


def test_a_stop_ends_every_stream_and_what_was_read_is_processed(engines) -> None:
    config = RunConfig()
    streams = [Stream(PhantomSource(replace(PHANTOM, n_frames=200, seed=i)), engines, [], config) for i in range(2)]
    pipeline = Pipeline.of_streams(streams, config)
    # one stop (each stream has a frame 3, and a second stop() is an abort, which processes nothing more)
    pipeline.on_result = lambda r: pipeline.stop() if r.frame.id == 3 and not pipeline.clock.stopping.is_set() else None
    pipeline.run()
    for summary in pipeline.summaries:
        assert summary.interrupted and 0 < summary.read < 200 and summary.processed == summary.published == summary.read and not summary.failed


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sources_file_is_read_with_defaults_and_unique_ids(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "probes.toml", """
[[stream]]
source = "phantom:30"
pace = 15
[[stream]]
source = "phantom:20"
live = true
reference = "other-ref.json"
[[stream]]
id = "knee"
source = "clips/knee.mp4"
pace = "realtime"
loop = true
fps = 25
""")
    specs = with_ids(read_sources_file(path, StreamSpec("", reference="ref.json", pace="max")))
    assert [s.id for s in specs] == ["phantom", "phantom-2", "knee"]
    assert [s.pace for s in specs] == [15.0, "max", "realtime"] and [s.live for s in specs] == [None, True, None]
    assert specs[1].reference == str(tmp_path / "other-ref.json") and specs[0].reference == "ref.json"
    assert specs[2].source == str(tmp_path / "clips" / "knee.mp4") and specs[2].loop and specs[2].fps == 25


@pytest.mark.parametrize(
    "entry, needle",
    [
        ('source = "phantom:5"\nspeed = 2', "stream 1: unknown field 'speed'"),
        ('source = "phantom:5"\npace = "fast"', "stream 1: field 'pace'"),
        ('source = "phantom:5"\nfps = 0', "stream 1: field 'fps'"),
        ('source = "phantom:5"\nlive = "yes"', "stream 1: field 'live' has the wrong type"),
        ('id = "a b"\nsource = "phantom:5"', "stream 1 (a b): field 'id' 'a b'"),
        ('id = "x"\nsource = "phantom:5"\n[[stream]]\nid = "x"\nsource = "phantom:6"', "stream id 'x' is given to two streams"),
        ('pace = "max"', "stream 1: field 'source' is missing"),
        ('source = "phantom:5"\n[[stream]]\nid = "x"\nsource = "phantom:5"\nreference = ""', "stream 2 (x): field 'reference' is empty"),
        ('id = ".."\nsource = "phantom:5"', "stream 1 (..): field 'id' '..'"),  # ids name output folders
        ('id = "streams.json"\nsource = "phantom:5"', "field 'id' 'streams.json'"),
    ],
)
def test_a_bad_sources_file_is_one_line_before_any_model(tmp_path: Path, capsys, entry: str, needle: str) -> None:
    path = write_toml(tmp_path / "bad.toml", "[[stream]]\n" + entry + "\n")
    started = time.monotonic()
    assert main(["run", "--sources", str(path), "--reference", str(tmp_path / "ref.json"), "--weights", "random:0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 30  # refused at once: no model was loaded (generous on a loaded machine)


def test_run_command_with_two_folders_of_one_name_writes_a_report_per_stream(engines, tmp_path: Path, capsys) -> None:
    ref = tmp_path / "ref.json"
    engines.first.reference.save(ref)
    image_folder(tmp_path / "a", 6)
    image_folder(tmp_path / "b", 5)
    (tmp_path / "a").rename(tmp_path / "probe")
    (tmp_path / "x").mkdir()
    (tmp_path / "b").rename(tmp_path / "x" / "probe")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["run", str(tmp_path / "probe"), str(tmp_path / "x" / "probe"), "--reference", str(ref), "--weights", "random:0",
                     "--no-publish", "--report", str(tmp_path / "rep"), "--masks", str(tmp_path / "masks"), "--no-progress"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out = capsys.readouterr().out
    assert code == 0, out
    index = json.loads((tmp_path / "rep" / "streams.json").read_text())
    assert [(s["id"], s["topic"], s["published"]) for s in index["streams"]] == [("probe", "bonestream/probe", 6), ("probe-2", "bonestream/probe-2", 5)]
    assert index["random_weights"] is True and "RANDOM WEIGHTS" in index["note"]
    assert len(list((tmp_path / "masks" / "probe").glob("*.png"))) == 6 and len(list((tmp_path / "masks" / "probe-2").glob("*.png"))) == 5
    for sid, n in (("probe", 6), ("probe-2", 5)):
        assert json.loads((tmp_path / "rep" / sid / "run_summary.json").read_text())["published"] == n
        assert (tmp_path / "rep" / sid / "latency_cdf.png").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_each_static_batch_is_its_own_cuda_graph(engines, model, random_identity) -> None:
    cuda = build_static_batches(model, random_identity, engines.first.reference, BackendSpec("torch", "cuda", "fp32", 4))
    graphs = [cuda.segmenters[b].backend.compute.graph for b in cuda.sizes]
    assert cuda.sizes == (1, 2, 4) and len({id(g) for g in graphs}) == 3
    ph = PhantomSource(PHANTOM).phantom
    frames = [ph.frame(i)[0] for i in range(3)]
    together = cuda.for_frames(3).predict(frames)  # padded to the 4-frame graph
    alone = [cuda.for_frames(1).predict([f])[0] for f in frames]
    assert all(np.array_equal(t.mask, a.mask) for t, a in zip(together, alone))


def test_max_batch_delay_is_bounded_at_parse_time(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "a.mp4", "b.mp4", "--reference", "r.json", "--max-batch-delay", "5000"])
    assert exit_.value.code == 2 and "--max-batch-delay: 5000 is out of range" in capsys.readouterr().err


def test_multistream_benchmark_writes_its_table_here_stamped(tmp_path):
    """The benchmark's command end to end at a toy size: JSON, markdown and PNG in the current folder, per-stream
    percentiles, labelled as random weights."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.multistream", "--streams", "2", "--fps", "5", "--seconds", "1", "--input-size", "32x40"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "multistream.json").read_text())
    row = doc["rows"][0]
    assert row["streams"] == 2 and len(row["per_stream"]) == 2 and row["total_fps"] > 0
    assert doc["meta"]["random_weights"] is True and "RANDOM WEIGHTS" in doc["note"]
    assert (tmp_path / "multistream.md").is_file() and (tmp_path / "multistream.png").is_file()


def test_a_sources_file_keeps_urls_and_refuses_entries_that_are_not_tables(tmp_path: Path, capsys) -> None:
    path = write_toml(tmp_path / "s.toml", '[[stream]]\nsource = "igtl://127.0.0.1:18944/Image"\n')
    (spec,) = read_sources_file(path, StreamSpec("", reference="ref.json"))
    assert spec.source == "igtl://127.0.0.1:18944/Image"  # not a path below the file's folder
    assert with_ids([StreamSpec("../.hidden"), StreamSpec("streams.json")])[0].id == "hidden"
    assert with_ids([StreamSpec("streams.json")])[0].id != "streams.json"
    bad = write_toml(tmp_path / "bad.toml", "stream = [1, 2]\n")
    assert main(["run", "--sources", str(bad), "--reference", "ref.json", "--no-progress"]) == 2
    assert "stream 1 is not a table" in capsys.readouterr().err
