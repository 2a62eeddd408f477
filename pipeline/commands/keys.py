"""bonestream keys: create a CURVE key pair for encrypted streams (one per publisher and per client)."""

from __future__ import annotations

import argparse
from pathlib import Path



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for NAME.key and NAME.key_secret")
    p.add_argument("--name", default="bonestream", help="key pair name, e.g. the host or user (default bonestream)")


def run(args: argparse.Namespace) -> int:
    from pipeline.publish.curve import create_keypair

    public, secret = create_keypair(args.out, args.name)
    print(f"public key: {public}  (give it to peers: servers list clients' with --curve-allow, clients pass the server's to --curve-server)")
    print(f"secret key: {secret}  (mode 0600; keep it on this host, never share it)")
    return 0
