"""Browser view (view --web): the HTTP endpoints over real sockets fed by a real ZeroMQ stream, its limits, and the
page in a real headless Chromium (screenshot pixels and the rendered counters)."""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.publish.message import FrameMessage
from pipeline.publish.publisher import Publisher
from pipeline.publish.subscriber import Subscriber
from pipeline.publish.transport import TransportError
from pipeline.publish.addresses import host_port
from pipeline.publish.web import NewestFrame, WebConfig, WebView, overlay_jpeg
from test_message import make_message

LOCAL = "tcp://127.0.0.1:0"
REPO = Path(__file__).resolve().parents[1]
GREEN = (0, 200, 0)  # the known overlay region, RGB
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def coloured_message(frame_id: int, size: tuple[int, int] = (240, 320)) -> FrameMessage:
    """A stream frame whose overlay is dark gray with a solid green block in its middle half."""
    h, w = size
    msg = make_message(frame_id, size=size)
    msg.overlay = np.full((h, w, 3), 60, np.uint8)
    msg.overlay[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = GREEN
    msg.encode()  # the JPEG made once, as the pipeline does: what the stream carries
    return msg


def publish_until(pub: Publisher, stop: threading.Event) -> None:
    """About 20 frames a second until ``stop``."""
    frame_id = 0
    while not stop.is_set():
        pub.send(coloured_message(frame_id))
        frame_id += 1
        stop.wait(0.05)


def get(web: WebView, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    port = int(web.url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def stats(web: WebView) -> dict:
    status, _, body = get(web, "/stats.json")
    assert status == 200
    return json.loads(body)


def until(condition, timeout: float = 30.0) -> None:
    """Wait for ``condition()`` (a generous deadline for a loaded machine: this is no timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.mark.parametrize("text, address", [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9000", ("::1", 9000)),
                                           ("localhost:65535", ("localhost", 65535))])
def test_host_port(text, address):
    assert host_port(text) == address


@pytest.mark.parametrize("argv, needle", [
    (["--web", "http"], "not [HOST:]PORT"), (["--web", "70000"], "not [HOST:]PORT"), (["--web", ":80"], "not [HOST:]PORT"),
    (["--web", "8080", "--headless-snapshot", "x.png"], "not allowed with"),
])
def test_bad_web_options_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_:
        main(["view", "tcp://127.0.0.1:9", *argv])
    assert exit_.value.code == 2 and needle in capsys.readouterr().err


def test_binding_follows_the_stream_rules(capsys):
    assert main(["view", "tcp://127.0.0.1:9", "--web", "0.0.0.0:0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to bind http://0.0.0.0:0/" in err and "--insecure" in err and "Traceback" not in err
    with WebView(WebConfig("0.0.0.0", 0, insecure=True), LOCAL) as web:  # bound on every interface, nothing sent
        assert web.url.startswith("http://0.0.0.0:")
    with WebView(WebConfig(port=0), LOCAL) as web:
        port = int(web.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(TransportError, match=f"cannot bind http://127.0.0.1:{port}/: Address already in use"):
            WebView(WebConfig(port=port), LOCAL)


def test_stats_and_frames_over_http():
    stop = threading.Event()
    with Publisher(LOCAL) as pub, Subscriber(pub.address) as sub, WebView(WebConfig(port=0, stale_after_s=1.0), pub.address) as web:
        before = stats(web)
        assert before["frame_id"] is None and before["stale"] and before["counters"]["received"] == 0 and before["address"] == pub.address
        assert get(web, "/frame.jpg")[0] == 503  # no frame yet
        follower = threading.Thread(target=web.follow, args=(sub, stop))
        follower.start()
        try:
            assert pub.wait_for_subscribers(1, timeout=30)
            sent = []
            for frame_id in (0, 1, 2, 3, 6):  # 4 and 5 never sent: the page counts them missed
                sent.append(coloured_message(frame_id))
                pub.send(sent[-1])
                until(lambda: stats(web)["frame_id"] == frame_id)
            now = stats(web)
            status, headers, jpeg = get(web, "/frame.jpg")
            assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["X-Frame-Id"] == "6"
            assert jpeg == sent[-1].overlay_jpeg  # the stream's own JPEG bytes, not encoded again
            assert get(web, f"/frame.jpg?after={headers['X-Frame-Seq']}")[0] == 204  # nothing newer within the long poll
            assert now["counters"] | {"skipped": 0} == {"received": 5, "skipped": 0, "missed": 2, "malformed": 0, "jumps": 0, "disconnects": 0}
            assert now["stream_id"] == "us" and now["weights"] == "random:0" and now["random_weights"] is True
            assert "RANDOM WEIGHTS" in now["warning"] and now["dropped_upstream"] == 1 and now["frame_size"] == [240, 320]
            assert now["fps"] > 0 and 0 <= now["latency_ms"]["p50"] and 0 <= now["latency_ms"]["last"] and not now["stale"]
            until(lambda: stats(web)["stale"])  # no frame for longer than stale_after_s
            assert stats(web)["fps"] == 0.0 and stats(web)["age_s"] > 1.0
            assert get(web, "/stats.json", host=f"rebound.example:{web.url.rsplit(':', 1)[1]}")[0] == 403
            assert get(web, "/nothing")[0] == 404 and get(web, "/frame.jpg?after=x")[0] == 400
            status, headers, page = get(web, "/")
            assert status == 200 and b'id="received"' in page and b"http" not in page.split(b"<body>")[1]  # nothing fetched from elsewhere
        finally:
            stop.set()
            follower.join(30)
    assert not follower.is_alive()


def test_streams_without_a_jpeg_overlay_are_encoded_once_here():
    raw = make_message(0, overlay="raw")
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(overlay_jpeg(raw), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(int) - raw.overlay).mean() < 3
    mask_only = cv2.imdecode(np.frombuffer(overlay_jpeg(make_message(0, overlay=None)), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert mask_only[20, 4] > 200 and mask_only[4, 28] < 50  # bone in white, background black


def test_connection_limit_and_request_timeout():
    with WebView(WebConfig(port=0, max_connections=2, request_timeout_s=3.0), LOCAL) as web:
        port = int(web.url.rsplit(":", 1)[1].strip("/"))
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]  # connect, never ask
        try:
            assert get(web, "/stats.json")[0] == 503  # both slots held: refused at once, not queued
            for s in idle:
                assert s.recv(1) == b""  # the server closes a silent connection after its timeout
        finally:
            for s in idle:
                s.close()
        until(lambda: get(web, "/stats.json")[0] == 200)
        assert stats(web)["refused_requests"] >= 1


def test_a_stalled_browser_holds_up_neither_the_stream_nor_other_browsers():
    big = make_message(0, size=(2048, 2048))  # a noise JPEG of ~12 MB: far more than the socket buffers hold
    big.overlay = np.random.default_rng(0).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    big.encode()
    frames = [coloured_message(i) for i in range(1, 20)]
    with WebView(WebConfig(port=0), LOCAL) as web:
        web.show(big, {})
        port = int(web.url.rsplit(":", 1)[1].strip("/"))
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(30)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /frame.jpg HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            assert stalled.recv(1, socket.MSG_PEEK) == b"H"  # its answer has begun; from here on it never reads
            feeder = threading.Thread(target=lambda: [web.show(m, {}) for m in frames])
            feeder.start()
            feeder.join(60)
            assert not feeder.is_alive(), "showing frames blocked on a browser that does not read"
            status, headers, jpeg = get(web, "/frame.jpg")
            assert status == 200 and headers["X-Frame-Id"] == "19" and jpeg == frames[-1].overlay_jpeg
        finally:
            stalled.close()


def _chromium_or_skip() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing on CI: install it (apt-get install -y chromium)")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return CHROMIUM


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def test_headless_chromium_shows_the_overlay_and_the_counters(tmp_path):
    chromium = _chromium_or_skip()
    stop = threading.Event()
    with Publisher(LOCAL) as pub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "view", pub.address, "--web", "127.0.0.1:0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        feeder = threading.Thread(target=publish_until, args=(pub, stop))
        try:
            line = _first_line(proc, 120)
            assert line.startswith("serving http://127.0.0.1:"), line
            url = line.split()[1]
            assert pub.wait_for_subscribers(1, timeout=60)
            feeder.start()
            shot = tmp_path / "shot.png"
            browser = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1024,768", "--virtual-time-budget=1500",
                 "--dump-dom", f"--screenshot={shot}", url],
                capture_output=True, text=True, timeout=240,
            )
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
        finally:
            stop.set()
            proc.kill()
            if feeder.is_alive():
                feeder.join(30)
    assert browser.returncode == 0, browser.stderr[-2000:]
    dom = browser.stdout
    assert '<span id="state" class="live">LIVE</span>' in dom
    assert 'style="display: block;">RANDOM WEIGHTS (random:0): plumbing only, not anatomy</div>' in dom
    received = int(dom.split('id="received">')[1].split("<")[0])
    assert received > 0 and 'id="missed">0<' in dom and 'id="fps">-<' not in dom and 'id="bone">25 %<' in dom
    image = cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB).astype(int)
    green = (np.abs(image - GREEN).max(axis=-1) < 40)
    rows, cols = np.nonzero(green)
    assert green.sum() > 20_000, green.sum()  # the overlay's green block, scaled to the page
    assert abs(cols.mean() - image.shape[1] / 2) < 50 and rows.min() > 80  # centred, below the header and banner
    banner = (np.abs(image - (176, 0, 32)).max(axis=-1) < 30).sum()
    assert banner > 10_000  # the RANDOM WEIGHTS banner in red
    assert proc.returncode == 0 and "served " in output, output


def test_a_page_from_an_earlier_viewer_gets_the_newest_frame_at_once():
    """A tablet kept its page open while the viewer restarted: its frame count is ahead of the new viewer's."""
    newest = NewestFrame("tcp://127.0.0.1:5555")
    assert newest.newer_than(50, 0.05) is None  # no frame yet: the long poll waits, then 204
    newest.put(b"jpeg", time.monotonic_ns(), {"frame_id": 7})
    seq, jpeg, frame_id = newest.newer_than(50, 5.0)
    assert (seq, jpeg, frame_id) == (1, b"jpeg", 7)
    assert newest.newer_than(seq, 0.05) is None
