"""``igtl://HOST:PORT/DEVICE``: frames from an OpenIGTLink server (PlusServer, 3D Slicer, a scanner) as a live source.

bonestream connects as a client and takes IMAGE messages whose device name is DEVICE; every other message (other
devices, TRANSFORM, STATUS, ...) is skipped unparsed and counted in ``ignored``. Messages are parsed by pyigtl; its
client is not used, because it cannot tell a closed connection from a quiet one. Like a capture device, the newest
frame is kept and the frames the pipeline was too slow for are counted (GrabbedSource).

Pixels: uint8 with one component as is; RGB/RGBA (3 or 4 components) to gray by luma, as every colour source;
deeper integers (int8, 16- and 32-bit) scaled to 8-bit over their type's range with a one-time warning, as 16-bit
images are (pipeline/capture/frame.py to_uint8); float pixels, volumes (more than one slice) and other component
counts end the stream with one line naming the frame. Frames carry the IMAGE's pixel spacing and its header
timestamp as ``source_ts`` (the sender's clock, seconds since 1970).

Waits are bounded (IgtlConfig): no server within ``connect_timeout_s`` is an error; a connected server that sends no
IMAGE from DEVICE within ``first_frame_timeout_s`` is an error naming the devices it does send. A server that goes
away after that (PlusServer stopped or restarted) is reconnected to, every outage counted in ``reconnects`` and
``gaps``; if it is not back within ``reconnect_s`` the stream ends normally.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyigtl

from models.errors import FrameError
from models.preprocess import to_gray
from pipeline.capture.frame import Frame, SourceError, now_ns, to_uint8
from pipeline.capture.live import GrabbedSource
from pipeline.publish.igtl_image import spacing_of

log = logging.getLogger(__name__)

SCHEME = "igtl://"
HEADER_SIZE = pyigtl.MessageBase.IGTL_HEADER_SIZE
MAX_BODY = 1 << 30  # a body claiming more than 1 GiB is a stream out of step, not a frame
DEVICE_NAME_MAX = 20  # bytes in the OpenIGTLink header


def is_igtl(spec: str) -> bool:
    return spec.startswith(SCHEME)


def parse_spec(spec: str) -> tuple[str, int, str]:
    """``igtl://HOST:PORT/DEVICE`` -> (host, port, device), or one line saying what is wrong."""
    example = "e.g. igtl://127.0.0.1:18944/Image"
    address, sep, device = spec[len(SCHEME):].partition("/")
    host, colon, port = address.rpartition(":")
    host = host.strip("[]")
    if not colon or not host:
        raise SourceError(f"{spec}: expected igtl://HOST:PORT/DEVICE ({example})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SourceError(f"{spec}: port {port!r} is not a number 1..65535 ({example})")
    if not sep or not device:
        raise SourceError(f"{spec}: no device name after the port: which IMAGE stream to take ({example})")
    if len(device.encode()) > DEVICE_NAME_MAX or not device.isprintable():
        raise SourceError(f"{spec}: device name {device!r} is not up to {DEVICE_NAME_MAX} printable characters")
    return host, int(port), device


@dataclass(frozen=True)
class IgtlConfig:
    """Bounded waits: for the first connection, for the first IMAGE from the device, for a server to come back."""

    connect_timeout_s: float = 10.0
    first_frame_timeout_s: float = 10.0
    reconnect_s: float = 10.0
    poll_s: float = 0.2  # how often a blocked read looks at the stop flag and the deadlines

    def __post_init__(self) -> None:
        if not (self.connect_timeout_s >= 0 and self.first_frame_timeout_s > 0 and self.reconnect_s >= 0 and self.poll_s > 0):
            raise ValueError(f"IgtlConfig needs non-negative waits and poll_s > 0, got {self}")


class _Closed(Exception):
    """The server closed the connection."""


class IgtlSource(GrabbedSource):
    """IMAGE messages of one device from an OpenIGTLink server; ids count frames received, so gaps are drops."""

    def __init__(self, spec: str, *, config: IgtlConfig = IgtlConfig()) -> None:
        self.host, self.port, self.device = parse_spec(spec)
        self.name = spec
        self.stem = self.device
        self.config = config
        self.ignored = 0  # messages of other devices or types, skipped
        self.reconnects = 0
        self.gaps: list[tuple[float, float]] = []
        self._seen: dict[str, int] = {}  # "DEVICE (TYPE)" -> messages skipped
        self._next_id = 0
        self._last_error = ""  # why the last connection attempt failed
        super().__init__()

    # -- connection ------------------------------------------------------------------------------------
    def _connect(self) -> socket.socket | None:
        try:
            conn = socket.create_connection((self.host, self.port), timeout=min(1.0, self.config.connect_timeout_s or 1.0))
        except OSError as exc:
            self._last_error = exc.strerror or str(exc) or exc.__class__.__name__
            return None
        conn.settimeout(self.config.poll_s)
        return conn

    def _produce(self, put: Callable[[Frame], None]) -> None:
        started = time.monotonic()
        outage: float | None = None  # when the server went away, while reconnecting
        delay = 0.05
        while not self._stop.is_set():
            conn = self._connect()
            if conn is None:
                waited = time.monotonic() - (started if outage is None else outage)
                if outage is None and self._next_id == 0 and waited >= self.config.connect_timeout_s:
                    raise SourceError(f"{self.name}: no OpenIGTLink server at {self.host}:{self.port} after {waited:.1f} s ({self._last_error})")
                if outage is not None and waited >= self.config.reconnect_s:
                    log.warning("%s: the server did not come back within %.1f s: end of stream", self.name, self.config.reconnect_s)
                    return
                self._stop.wait(delay)
                delay = min(2 * delay, 1.0)
                continue
            if outage is not None:
                self.gaps.append((outage, time.monotonic()))
                self.reconnects += 1
                outage, delay = None, 0.05
            try:
                self._receive(conn, put, time.monotonic())
            except (_Closed, OSError) as exc:
                if self._stop.is_set():
                    return
                if self._next_id == 0:  # it never sent a frame: waiting on it is the first-frame wait
                    raise SourceError(f"{self.name}: the server closed the connection before sending an IMAGE from {self.device!r}{self._devices_seen()}") from None
                log.warning("%s: connection lost (%s); reconnecting for up to %.1f s", self.name, exc, self.config.reconnect_s)
                outage = time.monotonic()
            finally:
                conn.close()

    # -- messages --------------------------------------------------------------------------------------
    def _receive(self, conn: socket.socket, put: Callable[[Frame], None], connected: float) -> None:
        """Frames from one connection until the server closes it (_Closed) or the source stops."""
        while not self._stop.is_set():
            header = self._read(conn, HEADER_SIZE, connected)
            try:
                fields = pyigtl.MessageBase.parse_header(header)
            except (struct.error, UnicodeDecodeError):
                raise SourceError(f"{self.name}: not an OpenIGTLink stream (unreadable message header)") from None
            size = fields["body_size"]
            if size > MAX_BODY:
                raise SourceError(f"{self.name}: a message claims a {size}-byte body: not an OpenIGTLink stream in step")
            if fields["message_type"] != "IMAGE" or fields["device_name"] != self.device:
                self._skip(conn, size, connected)
                key = f"{fields['device_name']} ({fields['message_type']})"
                self._seen[key] = self._seen.get(key, 0) + 1
                self.ignored += 1
                continue
            message = pyigtl.ImageMessage()
            where = f"{self.name} frame {self._next_id}"
            try:
                message.unpack(fields, self._read(conn, size, connected))
            except (struct.error, ValueError, KeyError, IndexError, NotImplementedError) as exc:
                raise SourceError(f"{where}: unreadable IMAGE message ({exc.__class__.__name__}: {exc})") from None
            put(Frame(self._next_id, self._pixels(message.image, where), f"{self.stem}_{self._next_id:06d}", fields["timestamp"], now_ns(), spacing_of(message)))
            self._next_id += 1

    def _pixels(self, data: np.ndarray, where: str) -> np.ndarray:
        """One uint8 plane (gray, or RGB/RGBA made gray) from pyigtl's (slices, rows, columns[, components])."""
        if data.shape[0] != 1:
            raise SourceError(f"{where}: a volume of {data.shape[0]} slices; bonestream takes 2D frames (one slice)")
        if data.dtype.kind == "f":
            raise SourceError(f"{where}: {data.dtype} pixels; bonestream takes integer images (8-bit, or deeper scaled to 8-bit)")
        plane = np.ascontiguousarray(data[0], dtype=data.dtype.newbyteorder("="))
        try:
            return np.ascontiguousarray(to_gray(to_uint8(plane, self.name), where))
        except FrameError as exc:
            raise SourceError(str(exc)) from None

    def _read(self, conn: socket.socket, n: int, connected: float) -> bytes:
        """Exactly ``n`` bytes; waits in ``poll_s`` slices so a stop is seen and the first-frame deadline kept."""
        chunks, got = [], 0
        while got < n:
            try:
                chunk = conn.recv(min(n - got, 1 << 20))
            except TimeoutError:
                if self._stop.is_set():
                    raise _Closed("stopped") from None
                self._check_first_frame(connected)
                continue
            if not chunk:
                raise _Closed("closed by the server")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _skip(self, conn: socket.socket, n: int, connected: float) -> None:
        while n > 0:
            n -= len(self._read(conn, min(n, 1 << 20), connected))
        self._check_first_frame(connected)

    def _check_first_frame(self, connected: float) -> None:
        waited = time.monotonic() - connected
        if self._next_id == 0 and waited >= self.config.first_frame_timeout_s:
            raise SourceError(f"{self.name}: connected, but no IMAGE from device {self.device!r} in {waited:.1f} s{self._devices_seen()}")

    def _devices_seen(self) -> str:
        if not self._seen:
            return " (the server sent nothing)"
        return "; it sends: " + ", ".join(f"{k} x{v}" for k, v in sorted(self._seen.items()))
