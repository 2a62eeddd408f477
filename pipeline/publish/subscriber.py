"""Receivers of labelled frames: validated messages only, with counters that make every loss visible.

    with Subscriber("tcp://127.0.0.1:5555") as sub:
        msg = sub.latest(timeout=1.0)     # newest frame, or None

Counters: ``received`` frames returned; ``skipped`` complete frames passed over by ``latest`` for a newer
one; ``missed`` frames the sender published that never arrived (gaps in ``frame_id``: the publisher's
per-subscriber queue was full); ``malformed`` messages that failed validation (dropped, never raised);
``disconnects`` connections lost: the publisher went away, or sent a part larger than ``max_bytes`` (libzmq
drops such a peer before anything is allocated and, that being a protocol error, never reconnects to it). ZeroMQ
reconnects by itself after an ordinary loss (every 100 ms); a connection that libzmq gave up on (no reconnect
attempt within ``REVIVE_S``) is made again here, so no message can silence a subscriber. Frames lost meanwhile show
up as ``missed``; frame ids that start again from a lower value are a restart, not a loss.
"""

from __future__ import annotations

import json
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline.publish.curve import CurveClientConfig
from pipeline.publish.message import DEFAULT_MAX_BYTES, TOPIC_PREFIX, FrameMessage, MessageError, decode, decode_header, topic
from pipeline.publish.transport import Peer

RECONNECT_MS = 100
MAX_DRAIN = 256  # latest() returns even when frames arrive as fast as it can read them
MAX_STREAMS = 1024  # streams whose last frame id is remembered (the oldest is forgotten): a flood of ids is bounded
REVIVE_S = 1.0  # a lost connection without a reconnect attempt for this long is made again by the subscriber
CONNECTION_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECT_RETRIED
MAX_GAP = 100_000  # a forward jump larger than this is a new sequence (a restarted sender), not that many missed frames
MAX_HEADER_BYTES = 64 * 1024  # a malformed message's header is read for its ids only up to this size
NO_FRAMES_HINT = "check the address and --stream; an encrypted publisher also needs --curve-client and --curve-server"

Received = tuple[int, list[bytes]]  # (time.monotonic_ns() on receipt, multipart)


class Subscriber(Peer):
    """Connects a SUB socket to a Publisher. ``stream_id`` None receives every stream; ``conflate_latest`` makes
    recv() behave as latest(); ``max_bytes`` bounds one message (larger ones are refused unread)."""

    socket_type = zmq.SUB

    def __init__(
        self,
        address: str,
        *,
        stream_id: str | None = None,
        curve: CurveClientConfig | None = None,
        rcvhwm: int = 2,
        conflate_latest: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        # MAXMSGSIZE: libzmq drops a peer sending a larger part before Python ever allocates it
        options = {zmq.RCVHWM: rcvhwm, zmq.LINGER: 0, zmq.RECONNECT_IVL: RECONNECT_MS, zmq.MAXMSGSIZE: max_bytes}
        super().__init__(self.socket_type, options)
        self._connect(address, curve)
        if self.socket_type == zmq.SUB:
            # prefix match: "bonestream/us1" also admits "us10", so the header's stream_id is checked too
            self.socket.subscribe(topic(stream_id) if stream_id else TOPIC_PREFIX)
        self.stream_id = stream_id
        self.conflate_latest = conflate_latest
        self.max_bytes = max_bytes
        self.received = self.skipped = self.missed = self.malformed = self.disconnects = 0
        self._monitor = self.socket.get_monitor_socket(CONNECTION_EVENTS)  # closed with the context
        self._lost_at: float | None = None  # when the connection was lost, until libzmq (or we) reconnect
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.jumps = 0  # frame ids that went back, or forward by more than MAX_GAP: a new sequence, counted once
        self._last_ids: dict[str, int] = {}

    def recv(self, timeout: float | None = 1.0) -> FrameMessage | None:
        """The next valid frame (the newest one with ``conflate_latest``), or None after ``timeout`` seconds."""
        return self._receive(timeout, drain=self.conflate_latest)

    def latest(self, timeout: float | None = 1.0) -> FrameMessage | None:
        """Wait for a frame, then drain the queue and return the newest complete one (older ones are skipped).
        ZMQ_CONFLATE cannot do this: it does not support multipart messages."""
        return self._receive(timeout, drain=True)

    def counters(self) -> dict[str, int]:
        counts = {"received": self.received, "skipped": self.skipped, "missed": self.missed, "malformed": self.malformed}
        return counts | {name: getattr(self, name) for name in ("jumps", "disconnects") if getattr(self, name)}

    def _receive(self, timeout: float | None, drain: bool) -> FrameMessage | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (first := self._recv_raw(deadline)) is not None:
            batch = [first] + (self._drain() if drain else [])
            candidates = [(ns, parts, header) for ns, parts in batch if (header := self._header(parts)) is not None]
            for i in reversed(range(len(candidates))):  # newest first: only the one returned is decoded
                ns, parts, header = candidates[i]
                try:
                    msg = decode(parts, header=header)
                except MessageError:
                    self.malformed += 1
                    continue
                msg.received_ns = ns
                self.received += 1
                self.skipped += i
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                break  # a stream of malformed messages must not keep us past the timeout
        return None

    def _recv_raw(self, deadline: float | None) -> Received | None:
        while True:
            wakes = [t for t in (deadline, None if self._lost_at is None else self._lost_at + REVIVE_S) if t is not None]
            timeout_ms = max(0, int((min(wakes) - time.monotonic()) * 1000)) if wakes else None
            ready = dict(self._poller.poll(timeout_ms))
            self._watch_connection()
            if self.socket in ready:
                return time.monotonic_ns(), self.socket.recv_multipart()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _watch_connection(self) -> None:
        """Count lost connections; connect again where libzmq made no attempt within REVIVE_S (it gave up)."""
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
                self._lost_at = time.monotonic()
            else:  # libzmq is reconnecting (or has): leave it to it, a second connection would duplicate frames
                self._lost_at = None
        if self._lost_at is not None and time.monotonic() - self._lost_at >= REVIVE_S:
            self._lost_at = None
            self.socket.disconnect(self.address)  # the endpoint is still registered, its session dead: replace it
            self.socket.connect(self.address)

    def _drain(self) -> list[Received]:
        batch = []
        while len(batch) < MAX_DRAIN and self.socket.poll(0, zmq.POLLIN):
            batch.append((time.monotonic_ns(), self.socket.recv_multipart()))
        return batch

    def _header(self, parts: list[bytes]) -> dict | None:
        """Validated header of a message for this subscriber (None otherwise); notes gaps in frame ids."""
        try:
            header = decode_header(parts, max_bytes=self.max_bytes)
        except MessageError:
            self.malformed += 1
            claimed = _claimed_ids(parts)  # counted once: not again as a missed frame when the next one comes
            if claimed is not None and (self.stream_id is None or claimed[0] == self.stream_id):
                self._note(*claimed)
            return None
        if self.stream_id is not None and header["stream_id"] != self.stream_id:
            return None
        self._note(header["stream_id"], header["frame_id"])
        return header

    def _note(self, stream: str, frame_id: int) -> None:
        """Count the gap (or jump) from the stream's previous id."""
        last = self._last_ids.pop(stream, None)  # re-inserted below: the dict stays in order of last use
        if last is not None and frame_id > last + 1:
            gap = frame_id - last - 1
            if gap <= MAX_GAP:
                self.missed += gap
            else:
                self.jumps += 1
        elif last is not None and frame_id <= last:
            self.jumps += 1  # a lower (or repeated) id: the sender restarted
        self._last_ids[stream] = frame_id
        if len(self._last_ids) > MAX_STREAMS:
            del self._last_ids[next(iter(self._last_ids))]


def _claimed_ids(parts: list[bytes]) -> tuple[str, int] | None:
    """The stream and frame id a malformed message's header names, when it is readable JSON that names them."""
    try:
        header = json.loads(parts[1]) if len(parts) > 1 and len(parts[1]) <= MAX_HEADER_BYTES else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    stream, frame_id = header.get("stream_id"), header.get("frame_id")
    return (stream, frame_id) if isinstance(stream, str) and type(frame_id) is int and frame_id >= 0 else None


class LosslessReceiver(Subscriber):
    """Connects a PULL socket to a LosslessSender: every frame, in order, with the sender waiting for us."""

    socket_type = zmq.PULL
