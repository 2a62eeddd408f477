"""CURVE keys and configuration: encryption plus an allow-list of client keys, for streams that leave the host.

Key files are ZeroMQ certificates (``zmq.auth``): ``NAME.key`` holds the public key and may be shared;
``NAME.key_secret`` holds both keys and stays private (mode 0600, refused when readable by others).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from models.errors import BonestreamError


class CurveError(BonestreamError):
    """A key file that is missing, malformed, too readable, or a CURVE option given without its partner."""


def create_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (0600 from the start); never overwrite a key others may trust."""
    out_dir = Path(out_dir)
    public, secret = out_dir / f"{name}.key", out_dir / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise CurveError(f"{path} exists: refusing to overwrite a key that peers may already use")
    out_dir.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o077)
    try:
        zmq.auth.create_certificates(out_dir, name)
    finally:
        os.umask(umask)
    public.chmod(0o644)
    return public, secret


def load_key(path: str | Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys from a key file; ``secret`` requires a private, unshared NAME.key_secret."""
    path = Path(path)
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{path}: not a readable CURVE key file ({exc})") from None
    if secret:
        if secret_key is None:
            raise CurveError(f"{path}: holds no secret key (pass the NAME.key_secret file)")
        if path.stat().st_mode & 0o077:
            raise CurveError(f"{path}: secret key is readable by other users; run chmod 600 {path}")
    return public_key, secret_key


class _AllowList:
    """zmq.auth credentials provider: admits exactly the listed client public keys."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


@dataclass(frozen=True)
class CurveServerConfig:
    """Server secret key file plus the clients it admits: public key files, or folders of ``*.key`` files."""

    secret_file: Path
    allowed: tuple[Path, ...]

    def allowed_keys(self) -> frozenset[bytes]:
        """Loaded eagerly (zmq.auth.configure_curve only logs a bad folder and then denies everyone silently)."""
        files: list[Path] = []
        for path in map(Path, self.allowed):
            files += sorted(path.glob("*.key")) if path.is_dir() else [path]
        keys = frozenset(load_key(f, secret=False)[0] for f in files)
        if not keys:
            raise CurveError(f"no client public keys (*.key) in {', '.join(map(str, self.allowed)) or 'the allow-list'}")
        return keys

    def apply(self, socket: zmq.Socket, context: zmq.Context) -> ThreadAuthenticator:
        """Make ``socket`` a CURVE server; the returned authenticator (ZAP handler) must be stopped on close."""
        public, secret = load_key(self.secret_file, secret=True)
        keys = self.allowed_keys()
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(keys))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        return auth


@dataclass(frozen=True)
class CurveClientConfig:
    """This client's secret key file plus the server's public key file."""

    secret_file: Path
    server_public_file: Path

    def apply(self, socket: zmq.Socket) -> None:
        public, secret = load_key(self.secret_file, secret=True)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = load_key(self.server_public_file, secret=False)[0]


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE encryption (when the publisher uses it)")
    g.add_argument("--curve-client", type=Path, metavar="SECRETFILE", help="this client's NAME.key_secret (see bonestream keys)")
    g.add_argument("--curve-server", type=Path, metavar="PUBLICFILE", help="the publisher's public NAME.key")


def client_from_args(args: argparse.Namespace) -> CurveClientConfig | None:
    if args.curve_client is None and args.curve_server is None:
        return None
    if args.curve_client is None or args.curve_server is None:
        raise CurveError("--curve-client and --curve-server go together")
    return CurveClientConfig(args.curve_client, args.curve_server)


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """For commands that publish: CURVE server keys, or an explicit --insecure for a trusted network."""
    g = p.add_argument_group("network security (frames are patient data)")
    g.add_argument("--curve-secret", type=Path, metavar="SECRETFILE", help="this server's NAME.key_secret: encrypt with CURVE")
    g.add_argument(
        "--curve-allow", type=Path, action="append", default=[], metavar="PATH", help="client public key file or folder of them (repeatable)"
    )
    g.add_argument("--insecure", action="store_true", help="allow binding a non-loopback address without encryption")


def server_from_args(args: argparse.Namespace) -> CurveServerConfig | None:
    if args.curve_secret is None and not args.curve_allow:
        return None
    if args.curve_secret is None or not args.curve_allow:
        raise CurveError("--curve-secret needs at least one --curve-allow (and the other way round)")
    return CurveServerConfig(args.curve_secret, tuple(args.curve_allow))
