"""bonestream record: save a published stream as overlay video, mask PNGs and headers until stopped.

Ctrl-C (SIGINT) or SIGTERM ends a recording normally: the video is finalised and the exit code is 0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.commands.numbers import FPS, POSITIVE, POSITIVE_INT
from pipeline.commands.paths import check_new_recording
from pipeline.commands.signals import stop_on_signals
from pipeline.publish.curve import add_client_arguments, client_from_args

POLL_S = 0.2  # how soon a stop signal is noticed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", metavar="ADDR", help="publisher endpoint (or, with --lossless, the lossless endpoint)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="new folder for the recording")
    p.add_argument(
        "--lossless", action="store_true",
        help="ADDR is the pipeline's lossless PUSH endpoint: get every frame, pacing a replay (one recorder per endpoint)",
    )
    p.add_argument("--stream", metavar="ID", help="record only this stream_id (default: every stream)")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--timeout", type=POSITIVE, default=None, metavar="S", help="stop after S s without a frame (default: wait)")
    p.add_argument("--fps", type=FPS, default=30.0, help="frame rate written into the video (default 30)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no live status line on stderr")
    add_client_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.publish.recorder import MAX_SEGMENTS, MAX_STREAMS, Recorder, RecordError
    from pipeline.publish.subscriber import NO_FRAMES_HINT, LosslessReceiver, Subscriber
    from pipeline.status import StatusLine, record_status

    check_new_recording(Path(args.out), "--out")
    receiver = LosslessReceiver if args.lossless else Subscriber
    with (
        stop_on_signals() as stop,
        receiver(args.address, stream_id=args.stream, curve=client_from_args(args)) as rx,
        Recorder(args.out, fps=args.fps) as rec,
        StatusLine(record_status(rx, rec), enabled=args.progress),
    ):
        last_frame = time.monotonic()
        while not stop.is_set() and (args.max_frames is None or rec.frames < args.max_frames):
            msg = rx.recv(timeout=POLL_S)
            if msg is not None:
                rec.write(msg)
                last_frame = time.monotonic()
            elif args.timeout is not None and time.monotonic() - last_frame > args.timeout:
                break
    if rec.frames == 0:
        raise RecordError(f"no frames received from {args.address} ({NO_FRAMES_HINT})")
    refused = f", {rec.refused} frames of streams beyond the first {MAX_STREAMS} refused" if rec.refused else ""
    if rec.unrecorded_overlays:
        refused += f", {rec.unrecorded_overlays} overlays not in any video (frame size changed more than {MAX_SEGMENTS} times)"
    print(f"recorded {rec.frames} frames to {args.out}; {rx.counters()}{refused}")
    for stream_id, s in rec.summary()["streams"].items():
        segments = ", ".join(f"{v['file']} ({v['frames']} frames)" for v in s["video_segments"])
        video = segments or "no overlays in this stream: masks only"
        print(f"  {stream_id}: ids {s['first']}..{s['last']}, {len(s['gaps'])} gaps, video {video}")
    return 0
