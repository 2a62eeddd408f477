"""One ZeroMQ socket with its context, bound or connected with errors that name the address.

Each peer gets a context of its own so that each can run its own CURVE authenticator (one ZAP handler per
context) and so that closing it cannot hang on sockets that belong to someone else.
"""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from typing import Iterator, Mapping, Self

import zmq
from zmq.auth.thread import ThreadAuthenticator

from models.errors import BonestreamError
from pipeline.publish.curve import CurveClientConfig, CurveServerConfig

SECURITY_FLAGS = "--curve-secret/--curve-allow (CURVE) or --insecure"


class TransportError(BonestreamError):
    """An address that cannot be bound or connected, or one that would expose frames unencrypted."""


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// (or http://) on 127.0.0.0/8, ::1 or localhost: reachable from this
    host only."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport not in ("tcp", "http"):
        return False
    host = rest.rpartition(":")[0].strip("[]") if ":" in rest else rest
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_error(address: str, *, encrypted: bool, insecure: bool, remedy: str = SECURITY_FLAGS) -> TransportError | None:
    """Frames are patient data: binding a non-loopback address needs encryption, or the user's explicit ``insecure``."""
    if encrypted or insecure or is_loopback(address):
        return None
    return TransportError(f"refusing to bind {address} without encryption: it is reachable from other hosts; use {remedy}")


def check_bind(address: str, curve: CurveServerConfig | None, insecure: bool) -> None:
    """exposure_error for a ZeroMQ bind, raised: commands check it before the model loads, and again at the bind."""
    if (error := exposure_error(address, encrypted=curve is not None, insecure=insecure)) is not None:
        raise error


class Peer:
    """Owns a socket and its context; use as a context manager or call close()."""

    def __init__(self, kind: int, options: Mapping[int, int]) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(kind)
        self.address = ""
        self._authenticator: ThreadAuthenticator | None = None
        for option, value in options.items():
            self.socket.setsockopt(option, value)

    def _bind(self, address: str, curve: CurveServerConfig | None, insecure: bool) -> None:
        """Binds ``address`` once check_bind allows it."""
        try:
            check_bind(address, curve, insecure)
        except TransportError:
            self.close()
            raise
        with self._closing_on_error("bind", address):
            if curve is not None:
                self._authenticator = curve.apply(self.socket, self.context)
            self.socket.bind(address)

    def _connect(self, address: str, curve: CurveClientConfig | None) -> None:
        with self._closing_on_error("connect", address):
            if curve is not None:
                curve.apply(self.socket)
            self.socket.connect(address)

    @contextmanager
    def _closing_on_error(self, verb: str, address: str) -> Iterator[None]:
        """A failed setup closes the context (no leaked I/O threads) and names the address in the error."""
        try:
            yield
        except zmq.ZMQError as exc:
            self.close()
            raise TransportError(f"cannot {verb} {address}: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise
        self.address = self.socket.last_endpoint.decode()

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (``linger_ms`` overrides its LINGER: how long unsent messages may still go out)."""
        if self.socket.closed:
            return
        self.socket.close(linger_ms)
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.destroy(linger=0)  # also closes sockets others opened on it (monitors): term would wait for them

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
