"""Receivers of labelled frames: validated messages only, with counters that make every loss visible.

    with Subscriber("tcp://127.0.0.1:5555") as sub:
        msg = sub.latest(timeout=1.0)     # newest frame, or None

Counters: ``received`` frames returned; ``skipped`` complete frames passed over by ``latest`` for a newer
one; ``missed`` frames the sender published that never arrived (gaps in ``frame_id``: the publisher's
per-subscriber queue was full); ``malformed`` messages that failed validation (dropped, never raised).
ZeroMQ reconnects on its own (every 100 ms) when the publisher restarts; frame ids that start again
from a lower value are taken as such a restart, not as a loss.
"""

from __future__ import annotations

import time

import zmq

from pipeline.publish.curve import CurveClientConfig
from pipeline.publish.message import DEFAULT_MAX_BYTES, TOPIC_PREFIX, FrameMessage, MessageError, decode, decode_header, topic
from pipeline.publish.transport import Peer

RECONNECT_MS = 100
MAX_DRAIN = 256  # latest() returns even when frames arrive as fast as it can read them
MAX_STREAMS = 1024  # streams whose last frame id is remembered (the oldest is forgotten): a flood of ids is bounded
MAX_GAP = 100_000  # a forward jump larger than this is a new sequence (a restarted sender), not that many missed frames
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
        self.received = self.skipped = self.missed = self.malformed = 0
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
        return counts | ({"jumps": self.jumps} if self.jumps else {})

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
        timeout_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        return time.monotonic_ns(), self.socket.recv_multipart()

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
            return None
        stream, frame_id = header["stream_id"], header["frame_id"]
        if self.stream_id is not None and stream != self.stream_id:
            return None
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
        return header


class LosslessReceiver(Subscriber):
    """Connects a PULL socket to a LosslessSender: every frame, in order, with the sender waiting for us."""

    socket_type = zmq.PULL
