"""Browser view of a stream: the newest overlay with rate, latency and loss counters, served over HTTP by the
standard library, so a bedside tablet needs only a browser.

    GET /                   the page (pipeline/publish/web_page.py)
    GET /frame.jpg          the newest overlay as the stream sent it (JPEG; raw overlays are encoded once here)
    GET /frame.jpg?after=N  the first frame newer than sequence number N, or 204 after LONG_POLL_S without one
    GET /stats.json         fps, latency p50/last, the subscriber's counters, stream, weights, age, stale flag

Frames reach the browser by long polling, not MJPEG (multipart/x-mixed-replace): every request is short and ends
by itself, so per-request timeouts and the connection limit hold; a dropped Wi-Fi link heals on the next request
instead of leaving a dead image; the page can tell a stalled stream from an unreachable viewer; and a slow browser
simply asks less often, always for the newest frame, so nothing queues for it. The receiving loop only swaps the
newest frame into a slot under a lock; requests copy references out of it and write outside the lock, so a browser
that stops reading never holds up the subscriber. Loopback by default; any other address needs ``--insecure``, as
a ZeroMQ bind does (plain HTTP has no encryption to offer), and on loopback a request naming another host is
refused (DNS rebinding would otherwise let a web page read the frames).
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2

from pipeline.handoff import STOP_GRACE_S
from pipeline.publish.addresses import WEB_PORT, host_port_text
from pipeline.publish.encode import encode_jpeg
from pipeline.publish.message import FrameMessage
from pipeline.publish.subscriber import Subscriber
from pipeline.publish.transport import TransportError, exposure_error, is_loopback
from pipeline.publish.viewer import RateMeter, random_warning, since_capture_ms
from pipeline.publish.web_page import PAGE

POLL_S = 0.25  # how soon the receiving loop notices a stop signal
LONG_POLL_S = 1.0  # a frame request waits at most this long for a newer frame
HTTP_REMEDY = "--insecure (the page is plain HTTP: only on a network you trust)"
COUNTERS = ("received", "skipped", "missed", "malformed", "jumps", "disconnects")
BUSY = b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; img-src 'self' blob:; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
}


@dataclass(frozen=True)
class WebConfig:
    """Where the page is served and the limits that keep browsers from costing the stream anything."""

    host: str = "127.0.0.1"
    port: int = WEB_PORT  # 0: any free port (the bound one is in WebView.url)
    insecure: bool = False  # allow a non-loopback host
    max_connections: int = 16  # concurrent requests; more are answered 503 at once (a page uses two)
    request_timeout_s: float = 10.0  # a socket that neither sends nor reads for this long is closed
    stale_after_s: float = 2.0  # the page says STALE when the newest frame is older than this
    latency_window: int = 100  # frames the latency median runs over


def _url(host: str, port: int) -> str:
    return f"http://{host_port_text(host, port)}/"


class NewestFrame:
    """The newest frame's JPEG and the stream's numbers: written by the receiving loop, read by requests."""

    def __init__(self, address: str) -> None:
        self._changed = threading.Condition()
        self._seq = 0  # frames put so far: the page asks for one newer than the last it showed
        self._jpeg: bytes | None = None
        self._received_ns: int | None = None
        self._closed = False
        self._stats: dict[str, Any] = {
            "address": address, "stream_id": None, "frame_id": None, "weights": None, "random_weights": None, "warning": None,
            "fps": 0.0, "latency_ms": {"p50": None, "last": None, "published_p50": None}, "dropped_upstream": None,
            "foreground_fraction": None, "frame_size": None, "counters": dict.fromkeys(COUNTERS, 0),
        }

    def put(self, jpeg: bytes, received_ns: int, stats: dict[str, Any]) -> None:
        with self._changed:
            self._seq += 1
            self._jpeg, self._received_ns = jpeg, received_ns
            self._stats.update(stats)
            self._changed.notify_all()

    def note(self, counters: dict[str, int]) -> None:
        """Counters change without frames too (a disconnect, malformed messages)."""
        with self._changed:
            self._stats["counters"] = counters

    def newer_than(self, seq: int, timeout: float) -> tuple[int, bytes, int] | None:
        """(seq, JPEG, frame id) of the newest frame once it is newer than ``seq``; None after ``timeout``. A ``seq``
        ahead of ours comes from a page that watched an earlier viewer on this port: it gets the newest frame at once,
        so a restarted viewer never leaves a page frozen on an old frame."""
        with self._changed:
            self._changed.wait_for(lambda: (self._seq != seq and self._jpeg is not None) or self._closed, timeout)
            if self._seq == seq or self._jpeg is None:
                return None
            return self._seq, self._jpeg, self._stats["frame_id"]

    def stats(self, stale_after_s: float) -> dict[str, Any]:
        with self._changed:
            stats, received_ns, seq = dict(self._stats), self._received_ns, self._seq
        age = None if received_ns is None else (time.monotonic_ns() - received_ns) / 1e9
        stale = age is None or age > stale_after_s
        return stats | {"seq": seq, "age_s": age, "stale": stale, "stale_after_s": stale_after_s, "fps": 0.0 if stale else stats["fps"]}

    def close(self) -> None:
        """Wake every waiting request: the server is going away."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def overlay_jpeg(msg: FrameMessage) -> bytes:
    """The JPEG as the stream sent it; a raw overlay (or a mask-only stream's mask, in white) is encoded here."""
    if msg.overlay_jpeg is not None:
        return msg.overlay_jpeg
    return encode_jpeg(msg.overlay if msg.overlay is not None else cv2.cvtColor(msg.mask, cv2.COLOR_GRAY2RGB))


class _Server(ThreadingHTTPServer):
    """One thread per request, at most ``max_connections`` at once: the rest get 503 straight from the accept loop."""

    daemon_threads = True

    def __init__(self, config: WebConfig, frame: NewestFrame) -> None:
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.config, self.frame = config, frame
        self.slots = threading.BoundedSemaphore(config.max_connections)
        self.refused = 0
        super().__init__((config.host, config.port), _Handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: socket.socket, client_address: Any) -> None:
        """A browser that goes away or stops reading (reset, broken pipe, timeout) is routine, not a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def version_string(self) -> str:
        return "bonestream"

    def setup(self) -> None:
        self.timeout = self.server.config.request_timeout_s  # applied to the socket by StreamRequestHandler.setup
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_allowed():
            return self._send(403, b"this viewer answers only requests addressed to this host\n", "text/plain")
        url = urlsplit(self.path)
        if url.path == "/":
            return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        if url.path == "/stats.json":
            stats = self.server.frame.stats(self.server.config.stale_after_s) | {"refused_requests": self.server.refused}
            return self._send(200, json.dumps(stats).encode(), "application/json")
        if url.path == "/frame.jpg":
            return self._frame(parse_qs(url.query).get("after", ["-1"])[-1])
        self._send(404, b"not found: try /, /frame.jpg or /stats.json\n", "text/plain")

    def _frame(self, after: str) -> None:
        try:
            seq = int(after)
        except ValueError:
            return self._send(400, b"after must be an integer\n", "text/plain")
        newest = self.server.frame.newer_than(seq, LONG_POLL_S if seq >= 0 else 0.0)
        if newest is None:
            return self._send(204, b"", None) if seq >= 0 else self._send(503, b"no frame yet\n", "text/plain")
        seq, jpeg, frame_id = newest
        self._send(200, jpeg, "image/jpeg", {"X-Frame-Seq": str(seq), "X-Frame-Id": str(frame_id)})

    def _host_allowed(self) -> bool:
        """On loopback, only requests addressed to a loopback name (a rebound DNS name is another host)."""
        if not is_loopback(_url(self.server.config.host, 0)):
            return True
        return is_loopback(f"http://{self.headers.get('Host', '')}")

    def _send(self, code: int, body: bytes, content_type: str | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (HEADERS | (extra or {})).items():
            self.send_header(name, value)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """Quiet: a request log at frame rate would bury the command's own output."""


class WebView:
    """Serves the page in a daemon thread from construction until close(); ``follow`` feeds it from a subscriber.

    A non-loopback host without ``insecure`` and a port that cannot be bound are TransportErrors naming the URL."""

    def __init__(self, config: WebConfig, address: str) -> None:
        url = _url(config.host, config.port)
        if (error := exposure_error(url, encrypted=False, insecure=config.insecure, remedy=HTTP_REMEDY)) is not None:
            raise error
        self.config = config
        self.frame = NewestFrame(address)
        try:
            self._server = _Server(config, self.frame)
        except OSError as exc:
            raise TransportError(f"cannot bind {url}: {exc.strerror or exc}") from None
        self.url = _url(config.host, self._server.server_address[1])
        self._rate = RateMeter()
        self._received_ms: deque[float] = deque(maxlen=config.latency_window)
        self._published_ms: deque[float] = deque(maxlen=config.latency_window)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": POLL_S}, name="web-view", daemon=True)
        self._thread.start()

    def show(self, msg: FrameMessage, counters: dict[str, int]) -> None:
        """Make ``msg`` the page's frame (never blocks on a browser)."""
        published_ms, received_ms = since_capture_ms(msg)
        self._rate.tick(msg.received_ns if msg.received_ns is not None else time.monotonic_ns())
        self._published_ms.append(published_ms)
        if received_ms is not None:
            self._received_ms.append(received_ms)
        latency = {
            "p50": statistics.median(self._received_ms) if self._received_ms else None,
            "last": received_ms,
            "published_p50": statistics.median(self._published_ms),
        }
        stats = {
            "stream_id": msg.stream_id, "frame_id": msg.frame_id, "weights": msg.weights, "random_weights": msg.random_weights,
            "warning": random_warning(msg), "fps": self._rate.fps, "latency_ms": latency, "dropped_upstream": sum((msg.dropped or {}).values()),
            "foreground_fraction": msg.foreground_fraction, "frame_size": list(msg.frame_size), "counters": _counters(counters),
        }
        self.frame.put(overlay_jpeg(msg), msg.received_ns or time.monotonic_ns(), stats)

    def follow(self, sub: Subscriber, stop: threading.Event, max_frames: int | None = None) -> int:
        """Show the newest frame of ``sub`` until ``stop`` is set or ``max_frames`` arrived; returns frames shown."""
        shown = 0
        while not stop.is_set() and (max_frames is None or shown < max_frames):
            msg = sub.latest(timeout=POLL_S)
            if msg is not None:
                self.show(msg, sub.counters())
                shown += 1
            else:
                self.frame.note(_counters(sub.counters()))
        return shown

    def close(self) -> None:
        self.frame.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_GRACE_S)  # serve_forever ends within POLL_S of shutdown(); a stop never waits longer

    def __enter__(self) -> WebView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _counters(counters: dict[str, int]) -> dict[str, int]:
    """Every counter, zeros included (Subscriber.counters leaves out the rare ones while they are zero)."""
    return dict.fromkeys(COUNTERS, 0) | counters
