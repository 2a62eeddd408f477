"""Senders of labelled frames: a never-blocking fan-out for viewers, and a lossless channel for one recorder.

``Publisher`` (XPUB) is for live use: ``send`` never waits. When a subscriber is slower than the stream
its queue (``sndhwm`` messages, default 2) fills and ZeroMQ silently drops further frames *for that
subscriber only*; the others and the pipeline are unaffected. Subscribers see the drops as gaps in
``frame_id`` (their ``missed`` count). The publisher also reads subscription events, so it knows when
someone listens (``wait_for_subscribers``) and serialises nothing while no one does (the overlay JPEG is made
upstream, once per frame for every output).

``LosslessSender`` (PUSH) is for replay: ``send`` blocks while its one consumer is busy or not yet
connected, pacing the replay to the recorder, so every frame arrives exactly once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from models.errors import BonestreamError
from pipeline.choices import DEFAULT_ADDRESS
from pipeline.handoff import StopClock
from pipeline.publish.curve import CurveServerConfig
from pipeline.publish.message import FrameMessage
from pipeline.publish.transport import Peer

DEFAULT_LOSSLESS_ADDRESS = "tcp://127.0.0.1:5556"


class SendTimeout(BonestreamError):
    """The lossless consumer did not take a frame in time (not connected, stopped, or stuck)."""


class Publisher(Peer):
    """Binds an XPUB socket; ``sent`` counts frames handed to ZeroMQ while at least one subscriber listened."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, *, sndhwm: int = 2, curve: CurveServerConfig | None = None, insecure: bool = False
    ) -> None:
        # VERBOSER: every subscribe and unsubscribe reaches us, including duplicates, so counting works
        super().__init__(zmq.XPUB, {zmq.SNDHWM: sndhwm, zmq.LINGER: 100, zmq.XPUB_VERBOSER: 1})
        self._bind(address, curve, insecure)
        self.subscriptions = 0
        self.sent = 0

    def send(self, msg: FrameMessage) -> bool:
        """Stamp, encode and queue ``msg`` without blocking; False when nobody subscribes (nothing is encoded)."""
        self._read_subscriptions(0)
        if self.subscriptions <= 0:
            return False
        self.socket.send_multipart(msg.stamped().encode(), flags=zmq.NOBLOCK, copy=False)
        self.sent += 1
        return True

    def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``n`` subscriptions are live (one per subscriber of this package); False on timeout.
        Publishing before that loses frames to the slow-joiner effect."""
        deadline = time.monotonic() + timeout
        while self.subscriptions < n:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return False
            self._read_subscriptions(remaining_ms)
        return True

    def _read_subscriptions(self, timeout_ms: int) -> None:
        while self.socket.poll(timeout_ms, zmq.POLLIN):
            event = self.socket.recv()
            self.subscriptions += {b"\x01": 1, b"\x00": -1}.get(event[:1], 0)
            timeout_ms = 0


class LosslessSender(Peer):
    """Binds a PUSH socket for exactly one consumer (``bonestream record --lossless``): nothing is dropped.

    With several consumers PUSH would deal frames round-robin, each getting a share: use one per endpoint.
    A consumer that dies loses the frames already queued to it (at most the two HWMs plus socket buffers)."""

    def __init__(
        self,
        address: str = DEFAULT_LOSSLESS_ADDRESS,
        *,
        sndhwm: int = 2,
        curve: CurveServerConfig | None = None,
        insecure: bool = False,
        linger: float = 5.0,
    ) -> None:
        super().__init__(zmq.PUSH, {zmq.SNDHWM: sndhwm, zmq.LINGER: int(linger * 1000)})
        self._bind(address, curve, insecure)
        self.sent = 0

    def send(self, msg: FrameMessage, timeout: float | None = None, clock: StopClock | None = None) -> None:
        """Block until the consumer has room (forever when ``timeout`` is None), polling in slices so a stopping
        ``clock`` cuts the wait to its grace; SendTimeout otherwise."""
        clock = clock or StopClock()
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while not self.socket.poll(int(min(0.1, clock.bound(max(0.0, deadline - time.monotonic()))) * 1000), zmq.POLLOUT):
            if clock.bound(deadline - time.monotonic()) <= 0:
                why = " (the run is stopping)" if clock.stopping.is_set() and time.monotonic() < deadline else ""
                raise SendTimeout(f"{self.address}: no lossless consumer took frame {msg.frame_id} within {timeout} s{why}")
        self.socket.send_multipart(msg.stamped().encode(), flags=zmq.NOBLOCK, copy=False)
        self.sent += 1


class SharedSender:
    """One socket for several streams' outputs (each stream publishes on its own topic through the same port):
    ZeroMQ sockets are not thread-safe, so sends take turns under a lock, and the socket closes with the last
    stream's output. Anything else is the wrapped sender's."""

    def __init__(self, sender: Publisher | LosslessSender, users: int) -> None:
        self.sender = sender
        self.users = users
        self._lock = threading.Lock()

    def send(self, msg: FrameMessage, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.sender.send(msg, *args, **kwargs)

    def close(self, linger_ms: int | None = None) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0:
                self.sender.close(linger_ms)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sender, name)
