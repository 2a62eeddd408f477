"""OpenIGTLink in and out (3D Slicer / PLUS) with real pyigtl peers on loopback: a pyigtl server feeds
``igtl://HOST:PORT/DEVICE``, a pyigtl client receives ``run --igtl``'s Image and Prediction.

Random weights at a tiny model input: these tests check delivery, geometry, clocks and ids, never bone quality.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pyigtl
import pytest

from pipeline.capture.frame import Frame, SourceError
from pipeline.capture.igtl import IgtlConfig, IgtlSource
from pipeline.capture.open import open_source
from pipeline.capture.pacing import paced
from pipeline.cli import main
from pipeline.publish.igtl import IgtlOutput, RANDOM_NOTE
from pipeline.publish.addresses import host_port
from pipeline.publish.igtl_server import IgtlServer
from pipeline.publish.outputs import MessageFactory
from pipeline.publish.transport import TransportError
from pipeline.run import Pipeline, RunConfig
from test_sources import smooth_frames, write_dicom

WAIT_S = 60.0  # generous: the machine is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def feeder(port: int = 0) -> Iterator[pyigtl.OpenIGTLinkServer]:
    """A real pyigtl server (as PlusServer would be) on loopback; pyigtl replaces SIGINT/SIGTERM handlers, put back here."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    for s, h in handlers.items():
        signal.signal(s, h)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def receiver(port: int) -> Iterator[pyigtl.OpenIGTLinkClient]:
    """A real pyigtl client (as Slicer's OpenIGTLinkIF connector would be); it keeps the newest message per device."""
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
    try:
        yield client
    finally:
        client.stop()


def until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def image(pixels: np.ndarray, device: str = "Image", spacing: tuple[float, float] = (1.0, 1.0), timestamp: float | None = None) -> pyigtl.ImageMessage:
    """An IMAGE as PlusServer sends one: one slice, i = columns with the column spacing, j = rows."""
    row, col = spacing
    return pyigtl.ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=np.diag([col, row, 1.0, 1.0]), device_name=device, timestamp=timestamp)


def collect(client: pyigtl.OpenIGTLinkClient, want: int, timeout: float = WAIT_S) -> dict[int, dict[str, pyigtl.ImageMessage]]:
    """Image and Prediction messages by frame id, until ``want`` frames have both (or the timeout)."""
    frames: dict[int, dict[str, pyigtl.ImageMessage]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(len(v) == 2 for v in frames.values()) < want:
        for message in client.get_latest_messages():
            frames.setdefault(int(message.metadata["frame_id"]), {})[message.device_name] = message
        time.sleep(0.005)
    return frames


# ---------------------------------------------------------------- specs and binding


@pytest.mark.parametrize("spec, problem", [
    ("igtl://nohost", "expected igtl://HOST:PORT/DEVICE"),
    ("igtl://127.0.0.1:18944", "no device name"),
    ("igtl://127.0.0.1:18944/", "no device name"),
    ("igtl://127.0.0.1:port/Image", "port 'port' is not a number"),
    ("igtl://127.0.0.1:70000/Image", "port '70000' is not a number 1..65535"),
    ("igtl://127.0.0.1:18944/" + "x" * 21, "is not up to 20 printable characters"),
])
def test_bad_source_specs_are_one_line(spec: str, problem: str) -> None:
    with pytest.raises(SourceError, match="^" + spec.replace(".", r"\.") + ": .*" + problem.replace(".", r"\.")):
        open_source(spec)


def test_bad_specs_and_exposed_binds_fail_before_the_model_loads(capsys, tmp_path: Path) -> None:
    absent = str(tmp_path / "absent-ref.json")  # never read: each run must stop before the reference and the model
    assert main(["run", "igtl://nohost", "--reference", absent, "--report", str(tmp_path / "r")]) == 2
    assert "igtl://nohost: expected igtl://HOST:PORT/DEVICE" in capsys.readouterr().err
    assert main(["run", "phantom:2", "--reference", absent, "--igtl", "0.0.0.0:0", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "refusing to bind tcp://0.0.0.0:0" in err and "OpenIGTLink is not encrypted" in err and "--insecure" in err and "absent-ref" not in err
    assert main(["run", "phantom:2", "phantom:3", "--reference", absent, "--igtl", "--report", str(tmp_path / "r")]) == 2
    assert "--igtl serves one stream" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one line naming --igtl, exit 2
        main(["run", "phantom:2", "--reference", absent, "--igtl", "127.0.0.1:99999"])
    assert "argument --igtl: '127.0.0.1:99999' is not [HOST:]PORT" in capsys.readouterr().err


def test_addresses_and_the_loopback_rule() -> None:
    assert host_port("18944") == ("127.0.0.1", 18944)
    assert host_port("localhost:5") == ("localhost", 5) and host_port("[::1]:7") == ("::1", 7)
    for bad in ("", "host:", ":5", "a:b", "70000"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not \\[HOST:\\]PORT"):
            host_port(bad)
    with pytest.raises(TransportError, match=r"refusing to bind tcp://0\.0\.0\.0:0 .*OpenIGTLink is not encrypted"):
        IgtlServer("0.0.0.0", 0)
    server = IgtlServer("0.0.0.0", 0, insecure=True)  # the user's explicit choice; no client ever connects here
    try:
        assert server.port > 0 and server.clients == 0
    finally:
        server.close()
    busy = IgtlServer("127.0.0.1", 0)
    try:
        with pytest.raises(TransportError, match=f"cannot bind OpenIGTLink on 127.0.0.1:{busy.port}"):
            IgtlServer("127.0.0.1", busy.port)
    finally:
        busy.close()


# ---------------------------------------------------------------- source


def test_source_takes_its_device_converts_pixels_and_counts_the_rest() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    with feeder() as server:
        source = IgtlSource(f"igtl://127.0.0.1:{server.server_address[1]}/Image")
        frames = iter(source)
        try:
            server.send_message(pyigtl.TransformMessage(np.eye(4), device_name="ProbeToTracker"), wait=False)
            server.send_message(image(gray, device="Image_Reference"), wait=False)
            server.send_message(image(gray, spacing=(0.25, 0.5), timestamp=1700000000.25), wait=False)
            first = next(frames)
            assert first.id == 0 and first.image.dtype == np.uint8 and np.array_equal(first.image, gray)
            assert first.spacing_mm == pytest.approx((0.25, 0.5)) and first.source_ts == pytest.approx(1700000000.25)
            assert source.ignored == 2 and source.live
            rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            server.send_message(image(rgb), wait=False)  # colour: gray by luma, as every colour source
            assert np.array_equal(next(frames).image, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
            server.send_message(image(np.full((30, 40), 4095, np.uint16)), wait=False)  # 16-bit: its range to 8-bit
            deep = next(frames)
            assert deep.id == 2 and deep.image.dtype == np.uint8 and int(deep.image[0, 0]) == round(4095 * 255 / 65535)
            server.send_message(image(np.zeros((30, 40), np.float32)), wait=False)
            with pytest.raises(SourceError, match=r"/Image frame 3: float32 pixels; bonestream takes integer images"):
                next(frames)
        finally:
            source.close()


def test_waits_are_bounded_and_interrupt_wakes_the_source() -> None:
    nobody = IgtlSource(f"igtl://127.0.0.1:{free_port()}/Image", config=IgtlConfig(connect_timeout_s=0.5))
    with pytest.raises(SourceError, match=r"no OpenIGTLink server at 127\.0\.0\.1:\d+ after"):
        next(iter(nobody))
    with feeder() as server:
        wrong = IgtlSource(f"igtl://127.0.0.1:{server.server_address[1]}/Image", config=IgtlConfig(first_frame_timeout_s=1.0))
        server.send_message(image(np.zeros((8, 8), np.uint8), device="Image_Reference"), wait=False)
        with pytest.raises(SourceError, match=r"no IMAGE from device 'Image' in .* it sends: Image_Reference \(IMAGE\) x1"):
            next(iter(wrong))
        wrong.close()
    with feeder() as server:  # connected, nothing sent: iteration waits until interrupted
        quiet = IgtlSource(f"igtl://127.0.0.1:{server.server_address[1]}/Image", config=IgtlConfig(first_frame_timeout_s=WAIT_S))
        got: list[Frame] = []
        reader = threading.Thread(target=lambda: got.extend(quiet))
        reader.start()
        until(server.is_connected, "the source to connect")
        quiet.interrupt()
        reader.join(WAIT_S)
        assert not reader.is_alive() and got == []
        quiet.close()


def test_a_server_that_restarts_is_reconnected_and_one_that_stays_away_ends_the_stream() -> None:
    port = free_port()
    source = IgtlSource(f"igtl://127.0.0.1:{port}/Image", config=IgtlConfig(reconnect_s=3.0))
    frames = iter(source)
    try:
        with feeder(port) as first:
            first.send_message(image(np.full((8, 8), 1, np.uint8)), wait=False)
            assert next(frames).id == 0
        with feeder(port) as second:  # PlusServer restarted on the same port
            second.send_message(image(np.full((8, 8), 2, np.uint8)), wait=False)
            again = next(frames)
            assert again.id == 1 and int(again.image[0, 0]) == 2
            # one outage, or two when the stopping first server still took a connection before its socket closed
            assert source.reconnects in (1, 2) and len(source.gaps) == source.reconnects
        assert list(frames) == []  # gone for longer than reconnect_s: the stream ends, no error
    finally:
        source.close()


# ---------------------------------------------------------------- output


def test_spacing_comes_from_the_source_then_the_option_then_one_mm() -> None:
    server = IgtlServer("127.0.0.1", 0)
    try:
        def spacing(frame_spacing, option):
            out = IgtlOutput(server, stream_id="us", weights="random:0", random_weights=True, spacing_mm=option)
            return out._spacing(Frame(0, np.zeros((4, 4), np.uint8), "f", None, 0, frame_spacing))
        assert spacing((0.2, 0.3), 0.5) == ((0.2, 0.3), "source")
        assert spacing(None, 0.5) == ((0.5, 0.5), "option")
        assert spacing(None, None) == ((1.0, 1.0), "default")
    finally:
        server.close()


def test_a_client_that_never_reads_costs_skipped_frames_not_waiting() -> None:
    server = IgtlServer("127.0.0.1", 0)
    stuck = socket.create_connection(("127.0.0.1", server.port))  # connects, never reads
    try:
        until(lambda: server.clients == 1, "the client to be accepted")
        blob = bytes(1 << 20)
        for _ in range(64):  # 64 MiB: far more than the socket buffers hold
            assert server.send(blob) == 1  # returns at once: the client's thread is the one that waits
        until(lambda: server.skipped > 0, "frames skipped for the stuck client")
    finally:
        server.close()
        stuck.close()


def test_dicom_pipeline_sends_image_and_label_map_matching_the_zeromq_messages(make_segmenter, tmp_path: Path) -> None:
    pixels = smooth_frames(3)
    dcm = write_dicom(tmp_path / "cine.dcm", pixels, PixelSpacing=[0.2, 0.3], NumberOfFrames=3)
    seg = make_segmenter(list(pixels[:2]))
    server = IgtlServer("127.0.0.1", 0)
    output = IgtlOutput(server, stream_id="us", weights=seg.weights.label, random_weights=seg.weights.is_random, header_version=2)
    sent = {}
    with receiver(server.port) as client:
        until(lambda: server.clients == 1, "the client to connect")
        source = paced(open_source(dcm), 4.0)  # 4 fps: the test's client, which keeps the newest, sees every frame
        config = RunConfig(make_message=MessageFactory(seg, "us"))
        pipeline = Pipeline(source, seg, [output], config, on_result=lambda r: sent.setdefault(r.frame.id, r.message))
        runs = []
        runner = threading.Thread(target=lambda: runs.append(pipeline.run()))
        runner.start()
        got = collect(client, 3)
        runner.join(WAIT_S)
        summary = runs[0]
    assert summary.published == 3 and summary.outputs["igtl"] == {"written": 3, "dropped": 0, "failed": 0}
    complete = {i: v for i, v in got.items() if len(v) == 2}
    assert complete and set(complete) <= set(sent)
    for frame_id, pair in complete.items():
        img, pred = pair["Image"], pair["Prediction"]
        zmq = sent[frame_id]  # the FrameMessage the ZeroMQ stream carries for this frame
        assert img.image.shape == pred.image.shape == (1, *pixels.shape[1:]) and pred.image.dtype == np.uint8
        assert np.array_equal(img.image[0], pixels[frame_id])
        assert set(np.unique(pred.image)) <= {0, 1} and np.array_equal(pred.image[0], (zmq.mask > 0).astype(np.uint8))
        for m in (img, pred):
            assert np.allclose(m.ijk_to_world_matrix, np.diag([-0.3, -0.2, 1.0, 1.0]), atol=1e-6)  # origin at pixel (0, 0)
            assert m.world_coordinate_system == "ras" and m.message_id == frame_id
            meta = m.metadata
            assert int(meta["frame_id"]) == zmq.frame_id and meta["stream_id"] == zmq.stream_id == "us"
            assert int(meta["captured_ns"]) == zmq.timestamps_ns["captured"] and float(meta["source_ts"]) == pytest.approx(zmq.source_ts)
            assert meta["random_weights"] == "true" and meta["weights"] == "random:0" and meta["note"] == RANDOM_NOTE
            assert meta["spacing_from"] == "source"
        assert img.timestamp == pred.timestamp and abs(img.timestamp - time.time()) < 600


def test_run_cli_from_an_igtl_server_to_an_igtl_client(make_segmenter, ultrabones: Path, tmp_path: Path) -> None:
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((ultrabones / "sweep_frames").glob("*.png"))[:4]]
    ref = tmp_path / "ref.json"
    make_segmenter(frames[:2]).reference.save(ref)  # random:0, as the run below
    out_port = free_port()
    with feeder() as server, receiver(out_port) as client:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", f"igtl://127.0.0.1:{server.server_address[1]}/Image", "--reference", str(ref),
             "--weights", "random:0", "--no-publish", "--igtl", f"127.0.0.1:{out_port}", "--igtl-version", "2", "--report", str(tmp_path / "report"), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            until(lambda: server.is_connected() and client.is_connected() or proc.poll() is not None, "both connections")
            assert proc.poll() is None
            time.sleep(0.5)  # the output server accepts its client on its own thread
            got: dict[int, dict[str, pyigtl.ImageMessage]] = {}
            for i, pixels in enumerate(frames):  # one frame at a time, as a scanner at a slow frame rate
                server.send_message(image(pixels, spacing=(0.05392, 0.05392), timestamp=1000.0 + i), wait=False)
                got.update(collect(client, 1, timeout=30))
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "OpenIGTLink server on 127.0.0.1:" in out and "RANDOM" in out.upper()
    complete = {i: v for i, v in got.items() if len(v) == 2}
    assert len(complete) >= 3, (sorted(got), out)
    for frame_id, pair in complete.items():
        img, pred = pair["Image"], pair["Prediction"]
        assert img.image.shape == pred.image.shape == (1, *frames[0].shape)
        assert np.array_equal(img.image[0], frames[frame_id])  # ids count frames received: frame k is the k-th sent
        assert np.allclose(pred.ijk_to_world_matrix, img.ijk_to_world_matrix) and set(np.unique(pred.image)) <= {0, 1}
        assert np.linalg.norm(img.ijk_to_world_matrix[:3, 0]) == pytest.approx(0.05392, rel=1e-5)
        assert np.linalg.norm(img.ijk_to_world_matrix[:3, 1]) == pytest.approx(0.05392, rel=1e-5)
        assert img.metadata["frame_id"] == pred.metadata["frame_id"] == str(frame_id) and img.timestamp == pred.timestamp
        assert float(img.metadata["source_ts"]) == pytest.approx(1000.0 + frame_id)  # PLUS's clock, passed through
    assert "frames read 4, processed 4" in out


# ---------------------------------------------------------------- Debian's OpenIGTLink C library (PLUS, Slicer 4)

IGTL_INCLUDE = Path("/usr/include/openigtlink")


@pytest.fixture(scope="module")
def igtl_c_client(tmp_path_factory) -> Path:
    """tests/igtl_client.cxx compiled against libopenigtlink-dev (1.11, protocol 2); skipped without it, but a failure
    under CI (.ci/run installs it)."""
    if not (IGTL_INCLUDE / "igtlImageMessage.h").exists() or shutil.which("g++") is None:
        if os.environ.get("CI"):
            pytest.fail("the OpenIGTLink C library is missing on CI: install it (apt-get install -y libopenigtlink-dev g++)")
        pytest.skip("the OpenIGTLink C library is not installed (apt-get install libopenigtlink-dev)")
    exe = tmp_path_factory.mktemp("igtl") / "igtl_client"
    source = Path(__file__).with_name("igtl_client.cxx")
    built = subprocess.run(["g++", "-O1", "-o", str(exe), str(source), f"-I{IGTL_INCLUDE}", "-lOpenIGTLink"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return exe


def test_the_openigtlink_c_library_reads_our_images(igtl_c_client: Path, make_segmenter, tmp_path: Path) -> None:
    """What older PLUS builds and Slicer 4 read with (header version 1, the default): every Image and Prediction with
    its device name, size, type, spacing and pixels."""
    pixels = smooth_frames(3)
    dcm = write_dicom(tmp_path / "cine.dcm", pixels, PixelSpacing=[0.2, 0.3], NumberOfFrames=3)
    seg = make_segmenter(list(pixels[:2]))
    server = IgtlServer("127.0.0.1", 0)
    output = IgtlOutput(server, stream_id="us", weights=seg.weights.label, random_weights=seg.weights.is_random)
    out = tmp_path / "received"
    out.mkdir()
    client = subprocess.Popen([str(igtl_c_client), "127.0.0.1", str(server.port), "6", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until(lambda: server.clients == 1 or client.poll() is not None, "the C client to connect")
        sent = {}
        pipeline = Pipeline(paced(open_source(dcm), 2.0), seg, [output], RunConfig(make_message=MessageFactory(seg, "us")),
                            on_result=lambda r: sent.setdefault(r.frame.id, r.message))
        summary = pipeline.run()
        printed, _ = client.communicate(timeout=WAIT_S)
    finally:
        client.kill()
    assert summary.outputs["igtl"]["written"] == 3
    assert client.returncode == 0, printed
    images = [line.split() for line in printed.splitlines() if line.startswith("IMAGE")]
    height, width = pixels.shape[1:]
    assert [m[1] for m in images] == ["Image", "Prediction"] * 3, printed
    for n, (_, device, columns, rows, slices, scalar, spacing_i, spacing_j) in enumerate(images):
        assert (int(columns), int(rows), int(slices), int(scalar)) == (width, height, 1, 3)  # 3: uint8
        assert (float(spacing_i), float(spacing_j)) == pytest.approx((0.3, 0.2), rel=1e-5)
        got = np.fromfile(out / f"{n}-{device}.raw", np.uint8).reshape(height, width)
        expected = pixels[n // 2] if device == "Image" else (sent[n // 2].mask > 0).astype(np.uint8)
        assert np.array_equal(got, expected), (n, device)
