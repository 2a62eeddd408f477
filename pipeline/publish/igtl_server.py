"""A TCP server that hands packed OpenIGTLink messages to any number of clients (3D Slicer connects as a client).

pyigtl's own server is not used for this: it serves one client, queues up to 100 messages while none is connected
(a late client gets stale frames first), waits without bound for a slow client, and replaces the process's signal
handlers. Here each client has its own sender thread with a one-slot mailbox: it always gets the newest frame, a
slow client skips frames (counted in ``skipped``) and delays no one, and a client that takes nothing for
``send_timeout_s`` is disconnected (it may connect again). Binding follows the ZeroMQ rule (transport.py): loopback
unless the user passes ``insecure``, since OpenIGTLink is unencrypted and frames are patient data.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time

from pipeline.capture.live import Mailbox
from pipeline.handoff import STOP_GRACE_S
from pipeline.publish.addresses import IGTL_PORT, LOOPBACK, host_port_text
from pipeline.publish.transport import TransportError, exposure_error

log = logging.getLogger(__name__)

MAX_CLIENTS = 16


def check_igtl_bind(host: str, port: int, insecure: bool) -> str:
    """The ``HOST:PORT`` to show, once binding it is allowed (transport.exposure_error): loopback, or anything with
    ``insecure``, since OpenIGTLink has no encryption."""
    where = host_port_text(host, port)
    remedy = "--insecure (OpenIGTLink is not encrypted: only on a network you trust)"
    if (error := exposure_error(f"tcp://{where}", encrypted=False, insecure=insecure, remedy=remedy)) is not None:
        raise error
    return where


class _Client:
    """One connected client and the thread that sends it the newest message."""

    def __init__(self, conn: socket.socket, peer: str, send_timeout_s: float) -> None:
        self.conn = conn
        self.peer = peer
        self.mailbox: Mailbox[bytes] = Mailbox()
        self.alive = True
        conn.settimeout(send_timeout_s)
        self.thread = threading.Thread(target=self._run, name=f"bonestream-igtl-{peer}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (data := self.mailbox.take()) is not None:
                self._discard_incoming()
                self.conn.sendall(data)
        except OSError as exc:  # gone, reset, or took nothing for send_timeout_s (socket.timeout is an OSError)
            log.warning("OpenIGTLink client %s disconnected: %s", self.peer, exc or exc.__class__.__name__)
        finally:
            self.alive = False
            self.conn.close()

    def _discard_incoming(self) -> None:
        """Read what the client sent (Slicer may send status or queries; bonestream answers none), so its sends never
        block on a full buffer; an orderly close by the client ends this client."""
        while select.select([self.conn], [], [], 0)[0]:
            if not self.conn.recv(1 << 16):
                raise ConnectionError("closed by the client")

    def close(self, timeout: float) -> None:
        self.mailbox.finish()
        self.thread.join(timeout)
        if self.thread.is_alive():  # still sending to a stalled client: cut it off
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class IgtlServer:
    """Listens on ``host:port`` (port 0: any free port; ``port`` says which) and fans messages out to its clients."""

    def __init__(self, host: str = LOOPBACK, port: int = IGTL_PORT, *, insecure: bool = False, send_timeout_s: float = 10.0) -> None:
        where = check_igtl_bind(host, port, insecure)
        self.send_timeout_s = send_timeout_s
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            self._listener = socket.socket(family, kind, proto)
        except OSError as exc:
            raise TransportError(f"cannot bind OpenIGTLink on {where}: {exc.strerror or exc}") from None
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(MAX_CLIENTS)
        except OSError as exc:
            self._listener.close()
            raise TransportError(f"cannot bind OpenIGTLink on {where}: {exc.strerror or exc}") from None
        self._listener.settimeout(0.2)  # the accept loop looks at the stop flag this often
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.address = where.rpartition(":")[0] + f":{self.port}"
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connections = 0  # clients accepted so far
        self._skipped_gone = 0  # skipped by clients no longer listed
        self._accepting = threading.Thread(target=self._accept, name="bonestream-igtl-accept", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            name = f"{peer[0]}:{peer[1]}"
            with self._lock:
                self._skipped_gone += sum(c.mailbox.dropped for c in self._clients if not c.alive)
                self._clients = [c for c in self._clients if c.alive]
                if len(self._clients) >= MAX_CLIENTS:
                    log.warning("OpenIGTLink: refusing client %s, %d already connected", name, MAX_CLIENTS)
                    conn.close()
                    continue
                self._clients.append(_Client(conn, name, self.send_timeout_s))
                self.connections += 1
            log.info("OpenIGTLink client %s connected", name)

    @property
    def clients(self) -> int:
        """Clients connected now."""
        with self._lock:
            return sum(c.alive for c in self._clients)

    @property
    def skipped(self) -> int:
        """Messages a client was too slow to take before the next one replaced it, over all clients so far."""
        with self._lock:
            return self._skipped_gone + sum(c.mailbox.dropped for c in self._clients)

    def send(self, data: bytes) -> int:
        """Offer ``data`` (one or more packed messages, sent back to back) to every client; never waits. Returns the
        number of clients it went to."""
        with self._lock:
            live = [c for c in self._clients if c.alive]
        for client in live:
            client.mailbox.put(data)
        return len(live)

    def close(self) -> None:
        """Stop accepting and let each client take what it was sent, all within one STOP_GRACE_S (not one per
        client); a client still taking it then is cut off."""
        deadline = time.monotonic() + STOP_GRACE_S
        self._stop.set()
        self._listener.close()
        self._accepting.join(STOP_GRACE_S)
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close(max(0.0, deadline - time.monotonic()))
