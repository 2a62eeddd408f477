"""bonestream view: watch a published stream with rate, latency and loss counters, in a window (q or Esc quits), a
PNG snapshot, or a browser page (--web, until Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.numbers import POSITIVE, POSITIVE_INT
from pipeline.commands.paths import check_output_file
from pipeline.commands.signals import stop_on_signals
from pipeline.publish.addresses import WEB_PORT, host_port
from pipeline.publish.curve import CurveClientConfig, add_client_arguments, client_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", metavar="ADDR", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--stream", metavar="ID", help="show only this stream_id (default: every stream)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--headless-snapshot", type=Path, metavar="PNG", help="no window: write the last of --max-frames frames, annotated, to PNG")
    mode.add_argument(
        "--web", type=host_port, nargs="?", const=str(WEB_PORT), metavar="[HOST:]PORT",
        help=f"no window: serve a page with the newest overlay and the counters at http://HOST:PORT/ (default 127.0.0.1:{WEB_PORT}; "
        "a non-loopback HOST needs --insecure) until Ctrl-C or SIGTERM",
    )
    p.add_argument("--insecure", action="store_true", help="--web: allow a non-loopback HOST (plain HTTP, unencrypted: a trusted network only)")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="stop after N frames (snapshot default 1)")
    p.add_argument("--timeout", type=POSITIVE, default=10.0, metavar="S", help="snapshot: give up after S s without a frame (default 10)")
    add_client_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.publish.subscriber import Subscriber
    from pipeline.publish.viewer import show, snapshot

    if args.headless_snapshot is not None:
        check_output_file(args.headless_snapshot, "--headless-snapshot")
    curve = client_from_args(args)
    if args.web is not None:
        return _serve(args, curve)
    with Subscriber(args.address, stream_id=args.stream, curve=curve) as sub:
        if args.headless_snapshot is not None:
            n = snapshot(sub, args.headless_snapshot, max_frames=args.max_frames or 1, timeout=args.timeout)
            print(f"wrote {args.headless_snapshot} after {n} frames; {sub.counters()}")
        else:
            n = show(sub, title=f"bonestream {args.address}", max_frames=args.max_frames)
            print(f"showed {n} frames; {sub.counters()}")
    return 0


def _serve(args: argparse.Namespace, curve: CurveClientConfig | None) -> int:
    from pipeline.publish.subscriber import Subscriber
    from pipeline.publish.web import WebConfig, WebView

    host, port = args.web
    with (
        stop_on_signals() as stop,
        WebView(WebConfig(host, port, insecure=args.insecure), args.address) as web,
        Subscriber(args.address, stream_id=args.stream, curve=curve) as sub,
    ):
        print(f"serving {web.url} for {args.address}; Ctrl-C stops", flush=True)
        n = web.follow(sub, stop, args.max_frames)
    print(f"served {n} frames at {web.url}; {sub.counters()}")
    return 0
