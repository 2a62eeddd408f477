"""bonestream run SOURCE --reference REF: the streaming pipeline, until the source ends or SIGINT/SIGTERM.

Several sources (``run SRC1 SRC2 ...`` or ``--sources FILE.toml``) run as streams of one pipeline: see run_streams."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from models.errors import BonestreamError
from pipeline.choices import DEFAULT_ADDRESS
from pipeline.commands.common import (
    add_gate_argument, add_model_arguments, add_range_arguments, add_refine_argument, announce_weights, frame_range, load_segmenter, reference_for,
)
from pipeline.commands.numbers import BATCH_DELAY_MS, COUNT, FPS, POSITIVE, POSITIVE_INT, SECONDS
from pipeline.commands.paths import check_fresh_results, check_new_recording, check_output_dir
from pipeline.commands.sources import StreamSpec, parse_pace, played
from pipeline.publish.addresses import IGTL_PORT, LOOPBACK, host_port
from pipeline.publish.curve import add_server_arguments, server_from_args

if TYPE_CHECKING:
    from calibration.reference import Reference
    from pipeline.capture.frame import Source
    from pipeline.run import Pipeline, RunSummary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source", metavar="SOURCE", nargs="*",
        help="video, DICOM cine, image folder/glob, phantom[:N], a device (0, /dev/video0, GStreamer pipeline) or an OpenIGTLink IMAGE stream (igtl://HOST:PORT/DEVICE); several: one stream each",
    )
    p.add_argument("--sources", type=Path, default=None, metavar="FILE.toml", help="[[stream]] entries: source, id, reference, pace, fps, live, loop")
    p.add_argument("--reference", default=None, help="reference file from `bonestream calibrate` (every stream's unless its entry names one)")
    p.add_argument("--publish", default=DEFAULT_ADDRESS, metavar="ADDR", help=f"ZeroMQ PUB address (default {DEFAULT_ADDRESS}; loopback unless --insecure or CURVE)")
    p.add_argument("--no-publish", dest="publish", action="store_const", const=None, help="do not publish over ZeroMQ")
    p.add_argument("--stream-id", default=None, help="stream name in topics and headers (default us; several streams: each source's stem or the file's id)")
    p.add_argument("--overlay", choices=("jpeg", "raw", "none"), default="jpeg", help="overlay image in messages (default jpeg)")
    p.add_argument("--lossless", default=None, metavar="ADDR", help="also bind a PUSH endpoint for one lossless consumer (`bonestream record --lossless ADDR`)")
    p.add_argument("--wait-subscribers", type=COUNT, default=0, metavar="N", help="wait for N subscribers before the first frame")
    p.add_argument(
        "--wait-timeout", type=SECONDS, default=30.0,
        help="seconds to wait for subscribers at the start, and for a lossless consumer or recorder to take a frame (default 30)",
    )
    p.add_argument(
        "--igtl", type=host_port, nargs="?", const=str(IGTL_PORT), default=None, metavar="[HOST:]PORT",
        help=f"also serve OpenIGTLink (3D Slicer): IMAGE 'Image' and its label map 'Prediction' per frame (default {LOOPBACK}:{IGTL_PORT}; loopback unless --insecure)",
    )
    p.add_argument(
        "--igtl-version", type=int, choices=(1, 2), default=1,
        help="--igtl header version: 1 (default) every OpenIGTLink reader takes; 2 adds OpenIGTLink 3's metadata (frame id, stream, clocks)",
    )
    p.add_argument("--spacing", type=POSITIVE, default=None, metavar="MM", help="mm per pixel for --igtl when the source states none (default 1.0)")
    p.add_argument("--record", type=Path, default=None, metavar="DIR", help="record overlay video, masks and index here (every frame, in process)")
    p.add_argument("--masks", type=Path, default=None, metavar="DIR", help="write every mask as DIR/<frame>.png")
    p.add_argument("--overwrite", action="store_true", help="replace the masks of a previous run in --masks (refused otherwise)")
    p.add_argument("--pace", type=parse_pace, default="max", help="replay pace: realtime (recorded), max (default) or frames per second")
    p.add_argument("--loop", action="store_true", help="loop a file source (ids keep increasing)")
    p.add_argument(
        "--timestamps", type=Path, default=None, metavar="FILE",
        help="replay at the times in FILE instead of --pace: one time in seconds per line (line i: frame i), or CSV "
        "lines frame,seconds (the source's frame ids); blank lines, # comments and one header line skipped",
    )
    add_range_arguments(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", dest="live", action="store_const", const=True, default=None, help="keep only the newest frame, count drops (default for devices)")
    mode.add_argument("--replay", dest="live", action="store_const", const=False, help="lock-step, drop nothing (default for files)")
    p.add_argument("--fps", type=FPS, default=20.0, help="frame rate of image folders and the phantom (default 20)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1, help="frames per engine call, the engine's static batch (default 1; several streams: the largest of 1, 2, 4, ...)")
    p.add_argument(
        "--max-batch-delay", type=BATCH_DELAY_MS, default=2.0, metavar="MS",
        help="how long a partial batch waits for more frames after its first (ms, default 2; 0: run what is queued)",
    )
    p.add_argument("--queue-size", type=POSITIVE_INT, default=2, help="frames held between stages (default 2)")
    p.add_argument("--report", type=Path, default=Path("bonestream-run"), metavar="DIR", help="latency report and run summary folder (default ./bonestream-run)")
    add_server_arguments(p)
    add_model_arguments(p)
    add_gate_argument(p)
    add_refine_argument(p)


def _open(args: argparse.Namespace) -> tuple[Source, Reference]:
    """The source (range, timestamps, live or paced replay) and the reference fitted to it, all checked before the
    model loads. Nothing is read from a device here: it is opened when the run starts."""
    from pipeline.capture.open import open_source
    from pipeline.capture.ranges import select_frames
    from pipeline.capture.timestamps import TimestampedSource, read_timestamps

    if args.loop and (args.stop is not None or args.max_frames is not None):
        raise BonestreamError("--loop replays the source without end; --stop and --max-frames bound one pass: give one or the other")
    if args.timestamps is not None and args.pace != "max":
        raise BonestreamError(f"--timestamps {args.timestamps} sets the replay pace; leave out --pace {args.pace}")
    source = open_source(args.source, fps=args.fps)
    if args.timestamps is not None and (source.live or args.live):
        raise BonestreamError(f"--timestamps {args.timestamps} paces a replay; a live source arrives at its own pace")
    frames = frame_range(args)
    frames.check(source)
    reference = reference_for(args, [source])
    if args.timestamps is not None:
        source = TimestampedSource(source, read_timestamps(args.timestamps), args.timestamps, frames.start, frames.end)
    pace = "realtime" if args.timestamps is not None else args.pace
    spec = StreamSpec(args.source, pace=pace, fps=args.fps, live=args.live, loop=args.loop)
    return played(select_frames(source, frames), spec), reference


def check_binds(args: argparse.Namespace, curve) -> None:
    """Every address this run binds, checked against the exposure rule before the model loads."""
    from pipeline.publish.igtl_server import check_igtl_bind
    from pipeline.publish.transport import check_bind

    for address in (args.publish, args.lossless):
        if address:
            check_bind(address, curve, args.insecure)
    if args.igtl:
        check_igtl_bind(*args.igtl, args.insecure)


def run(args: argparse.Namespace) -> int:
    if args.sources is not None or len(args.source) != 1:
        if args.igtl:
            raise BonestreamError("--igtl serves one stream (devices Image and Prediction): run it with one source")
        if args.timestamps is not None or args.start or args.stop is not None or args.max_frames is not None:
            raise BonestreamError("--timestamps, --start, --stop and --max-frames apply to a run of one source")
        if args.stream_id is not None:
            raise BonestreamError("--stream-id names a run of one source; several streams take their ids from their sources or the sources file")
        from pipeline.commands.run_streams import run_streams

        return run_streams(args)
    from pipeline.publish.igtl import IgtlOutput
    from pipeline.publish.igtl_server import IgtlServer
    from pipeline.publish.outputs import LosslessOutput, MaskFiles, MessageFactory, ZmqOutput
    from pipeline.publish.publisher import LosslessSender, Publisher
    from pipeline.handoff import StopClock
    from pipeline.memory import check_inference, check_queues
    from pipeline.run import Pipeline, RunConfig
    from pipeline.status import StatusLine, pipeline_status

    args.source = args.source[0]
    args.stream_id = args.stream_id or "us"
    if args.reference is None:
        raise BonestreamError("--reference is required")
    check_new_recording(args.record, "--record")
    check_output_dir(args.masks, "--masks")
    check_fresh_results(args.masks, "--masks", MaskFiles.owned, args.overwrite)
    check_output_dir(args.report, "--report")
    curve = server_from_args(args)
    check_binds(args, curve)
    source, reference = _open(args)
    check_inference(args.device, args.batch_size, reference.geometry.input_size, reference.geometry.stride, "--batch-size")
    check_queues(args.queue_size, 1, reference.geometry.frame_size)
    seg = load_segmenter(args, reference)
    announce_weights(seg.weights.label)
    clear_report(args.report)
    clock = StopClock()  # the pipeline's and every output's that waits itself: a signal ends the run within its grace
    with ExitStack() as stack:
        stack.callback(source.close)
        outputs = []
        if args.publish:
            publisher = Publisher(args.publish, curve=curve, insecure=args.insecure)
            outputs.append(ZmqOutput(publisher, args.overlay))
            print(f"publishing on {args.publish} (topic bonestream/{args.stream_id}){' with CURVE' if curve else ''}")
            wait_for_subscribers(args, publisher)
        if args.lossless:
            outputs.append(LosslessOutput(LosslessSender(args.lossless, curve=curve, insecure=args.insecure), args.overlay, args.wait_timeout, clock))
            print(f"lossless PUSH on {args.lossless}")
        if args.igtl:
            server = IgtlServer(*args.igtl, insecure=args.insecure)
            outputs.append(IgtlOutput(server, stream_id=args.stream_id, weights=seg.weights.label, random_weights=seg.weights.is_random, spacing_mm=args.spacing, header_version=args.igtl_version))
            print(f"OpenIGTLink server on {server.address} (devices Image, Prediction)")
        outputs += file_outputs(args, source, args.record, args.masks)
        config = RunConfig(
            live=args.live, queue_size=args.queue_size, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay, output_timeout=args.wait_timeout,
            make_message=MessageFactory(seg, args.stream_id),
        )
        pipeline = Pipeline(source, seg, outputs, config, clock=clock)
        with _stop_on_signals(pipeline), StatusLine(pipeline_status(pipeline), enabled=args.progress):
            summary = pipeline.run()
    return _report(args, seg, summary)


def clear_report(folder: Path) -> None:
    """A previous run's latency report and summary never sit beside this run's results."""
    for previous in ("latency.json", "latency_cdf.png", "run_summary.json"):
        (folder / previous).unlink(missing_ok=True)


def wait_for_subscribers(args: argparse.Namespace, publisher) -> None:
    """--wait-subscribers: up to --wait-timeout for them, then the run starts anyway (said once)."""
    if args.wait_subscribers and not publisher.wait_for_subscribers(args.wait_subscribers, args.wait_timeout):
        print(f"warning: {publisher.subscriptions} of {args.wait_subscribers} subscribers after {args.wait_timeout} s; starting anyway", file=sys.stderr)


def file_outputs(args: argparse.Namespace, source: Source, record: Path | None, masks: Path | None) -> list:
    """The outputs that write files: a recording (overlay video, masks, index) and mask PNGs."""
    from pipeline.publish.outputs import MaskFiles, RecordOutput
    from pipeline.publish.recorder import Recorder

    outputs = []
    if record:
        outputs.append(RecordOutput(Recorder(record, fps=source.fps or args.fps)))
    if masks:
        outputs.append(MaskFiles(masks))
    return outputs


@contextmanager
def _stop_on_signals(pipeline: Pipeline) -> Iterator[None]:
    """While the pipeline runs, SIGINT/SIGTERM stop reading; what was read is still processed and every output is
    closed cleanly. A second signal aborts: outputs are no longer waited for and what is not through yet is counted
    as dropped. The previous handlers come back after the run (a signal while the report is written ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: pipeline.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_report(out_dir: Path, source: str, pace: str | float, seg, summary: RunSummary, extra: dict | None = None) -> tuple[dict, Path, Path]:
    """A stream's latency report (JSON + CDF) and run summary in ``out_dir``; the report and its two files.
    ``extra`` (the frame range, a timestamps file) goes into both."""
    from pipeline.latency import latency_report, write_latency_report
    from pipeline.publish.files import write_json_atomic

    extra = extra or {}
    meta = {
        "source": source,
        "mode": "live" if summary.live else "replay",
        "pace": pace,
        **extra,
        "backend": {"name": seg.backend.name, "device": seg.backend.device, "precision": seg.backend.precision},
        "geometry": seg.geometry.to_dict(),
        "weights": seg.weights.to_dict(),
        "reference_id": seg.reference.id,
        "frames": summary.to_dict(),
        "recorded_at_unix": time.time(),
    }
    report = latency_report(summary.latency, meta=meta)
    title = f"{Path(source).name}: {seg.backend.name}/{seg.backend.device}, input {seg.geometry.input_size[0]}x{seg.geometry.input_size[1]}"
    if seg.weights.is_random:
        title += " (RANDOM WEIGHTS)"
    json_path, png_path = write_latency_report(report, summary.latency, out_dir, title=title)
    write_json_atomic(out_dir / "run_summary.json", {**summary.to_dict(), **extra})
    return report, json_path, png_path


def _report(args: argparse.Namespace, seg, summary) -> int:
    from pipeline.latency import format_report

    timing = {"timestamps": str(args.timestamps) if args.timestamps else None, "range": frame_range(args).to_dict()}
    pace = "timestamps" if args.timestamps else args.pace
    report, json_path, png_path = write_report(args.report, args.source, pace, seg, summary, timing)
    if summary.refused:
        raise BonestreamError(f"{summary.refused} (the run stopped after the first {summary.read} frame(s) it read, all refused)")
    print_summary(summary)
    print(format_report(report))
    print(f"latency report: {json_path} and {png_path}")
    return 1 if summary.failed or summary.output_errors else 0


def print_summary(summary: RunSummary) -> None:
    """Counts, failed frames and output errors of one stream, as printed at the end of a run."""
    for line in summary.lines():
        print(line)
    if summary.failed:
        print("failed frames: " + json.dumps(summary.failed[:10]) + (" ..." if len(summary.failed) > 10 else ""))
    for err in summary.output_errors[:5]:
        print(f"output error: {err}", file=sys.stderr)
