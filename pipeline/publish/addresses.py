"""``[HOST:]PORT`` options (the browser view, OpenIGTLink) and their default ports, parsed one way everywhere.

A light module on purpose: command-line parsers import it, and ``bonestream --help`` loads no OpenCV or torch.
"""

from __future__ import annotations

import argparse

LOOPBACK = "127.0.0.1"
WEB_PORT = 8080
IGTL_PORT = 18944  # the OpenIGTLink port PlusServer and 3D Slicer use


def host_port(text: str) -> tuple[str, int]:
    """argparse type for ``[HOST:]PORT`` (IPv6 as ``[::1]:8080``); HOST defaults to 127.0.0.1, PORT 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else LOOPBACK
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise argparse.ArgumentTypeError(f"{text!r} is not [HOST:]PORT with a port from 0 to 65535")
    return host, int(port)


def host_port_text(host: str, port: int) -> str:
    """``HOST:PORT`` as people and URLs write it (an IPv6 host in brackets): host_port's inverse."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
