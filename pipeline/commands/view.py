"""bonestream view: watch a published stream with rate, latency and loss counters (q or Esc quits)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.numbers import POSITIVE, POSITIVE_INT
from pipeline.commands.paths import check_output_file
from pipeline.publish.curve import add_client_arguments, client_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", metavar="ADDR", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--stream", metavar="ID", help="show only this stream_id (default: every stream)")
    p.add_argument("--headless-snapshot", type=Path, metavar="PNG", help="no window: write the last of --max-frames frames, annotated, to PNG")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="stop after N frames (snapshot default 1)")
    p.add_argument("--timeout", type=POSITIVE, default=10.0, metavar="S", help="snapshot: give up after S s without a frame (default 10)")
    add_client_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.publish.subscriber import Subscriber
    from pipeline.publish.viewer import show, snapshot

    if args.headless_snapshot is not None:
        check_output_file(args.headless_snapshot, "--headless-snapshot")
    with Subscriber(args.address, stream_id=args.stream, curve=client_from_args(args)) as sub:
        if args.headless_snapshot is not None:
            n = snapshot(sub, args.headless_snapshot, max_frames=args.max_frames or 1, timeout=args.timeout)
            print(f"wrote {args.headless_snapshot} after {n} frames; {sub.counters()}")
        else:
            n = show(sub, title=f"bonestream {args.address}", max_frames=args.max_frames)
            print(f"showed {n} frames; {sub.counters()}")
    return 0
