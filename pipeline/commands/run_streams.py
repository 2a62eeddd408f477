"""``bonestream run SRC1 SRC2 ...`` / ``--sources FILE.toml``: several probes through one process and one engine.

Each stream has its own capture, hand-off policy (live: newest kept, drops counted; replay: lock-step), frame ids,
outputs and latency report, and publishes on its own topic (``bonestream/<id>``) through the one ZeroMQ port. One
batching stage serves them all (pipeline.run). Streams that share a reference share its engines, one per static
batch size, and are batched together; streams with another reference get that reference's own engines (its own
centroids and geometry) and are batched apart. Every reference must come from the same weights: one model is loaded.

Output folders hold one subfolder per stream: ``--report DIR/<id>/`` (latency.json, latency_cdf.png,
run_summary.json), ``--record DIR/<id>/``, ``--masks DIR/<id>/``; ``DIR/streams.json`` indexes the run.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from calibration.reference import Reference
from models.errors import BonestreamError
from models.loader import load_model
from pipeline.commands.common import announce_weights, fit_reference, gated, weights_for
from pipeline.commands.paths import check_fresh_results, check_new_recording, check_output_dir
from pipeline.commands.run import _stop_on_signals, check_binds, clear_report, file_outputs, print_summary, wait_for_subscribers, write_report
from pipeline.commands.sources import StreamSpec, open_stream, read_sources_file, with_ids
from pipeline.handoff import StopClock
from pipeline.infer.backend import Backend
from pipeline.infer.select import BackendSpec, Gate
from pipeline.latency import STAGES
from pipeline.memory import check_inference, check_queues
from pipeline.publish.curve import server_from_args
from pipeline.publish.files import write_json_atomic
from pipeline.publish.message import topic
from pipeline.publish.outputs import LosslessOutput, MaskFiles, MessageFactory, ZmqOutput
from pipeline.publish.publisher import LosslessSender, Publisher, SharedSender
from pipeline.run import Output, Pipeline, RunConfig, Stream
from pipeline.segment.batches import StaticBatches, build_static_batches
from pipeline.status import StatusLine, pipeline_status

END_TO_END = next(name for name in STAGES if name.startswith("end to end"))


def stream_specs(args: argparse.Namespace) -> list[StreamSpec]:
    """The streams asked for, ids assigned, every reference named: from ``--sources`` or the SOURCE arguments."""
    defaults = StreamSpec("", reference=args.reference, pace=args.pace, fps=args.fps, live=args.live, loop=args.loop)
    if args.sources is not None:
        if args.source:
            raise BonestreamError("give sources either as arguments or in --sources, not both")
        specs = read_sources_file(args.sources, defaults)
    elif not args.source:
        raise BonestreamError("no source: give SOURCE arguments or --sources FILE.toml")
    else:
        if args.reference is None:
            raise BonestreamError("--reference is required")
        specs = [replace(defaults, source=s) for s in args.source]
    return with_ids(specs)


def _references(specs: list[StreamSpec]) -> dict[str, Reference]:
    """Every reference, loaded and checked before the model: all must come from the same weights."""
    refs = {path: Reference.load(path) for path in dict.fromkeys(s.reference for s in specs)}
    (first, ref), *others = refs.items()
    for path, other in others:
        if other.weights_label != ref.weights_label:
            raise BonestreamError(f"references {first} and {path} were calibrated with different weights: streams of one run share one model")
    return refs


def _check_outputs(args: argparse.Namespace, ids: list[str]) -> None:
    check_output_dir(args.report, "--report")
    for sid in ids:
        check_new_recording(args.record / sid if args.record else None, "--record")
        masks = args.masks / sid if args.masks else None
        check_output_dir(masks, "--masks")
        check_fresh_results(masks, "--masks", MaskFiles.owned, args.overwrite)


def run_streams(args: argparse.Namespace) -> int:
    specs = stream_specs(args)
    refs = _references(specs)
    _check_outputs(args, [s.id for s in specs])
    curve = server_from_args(args)
    check_binds(args, curve)
    with ExitStack() as stack:
        sources = []
        for s in specs:  # opened (and every reference fitted to its streams' frame size) before the model loads
            sources.append(open_stream(s))
            stack.callback(sources[-1].close)
        for path in refs:
            refs[path] = fit_reference(refs[path], [src for s, src in zip(specs, sources) if s.reference == path])
        for ref in refs.values():  # each reference gets its own engines
            check_inference(args.device, args.batch_size, ref.geometry.input_size, ref.geometry.stride, "--batch-size")
        check_queues(args.queue_size, len(specs), max((r.geometry.frame_size for r in refs.values()), key=lambda s: s[0] * s[1]))
        first = next(iter(refs.values()))
        model, identity = load_model(weights_for(first, args.weights), progress=args.progress)
        announce_weights(identity.label)
        engines: dict[str, StaticBatches] = {}
        for path, ref in refs.items():

            def build(precision: str, gate: Gate) -> list[Backend]:
                spec = BackendSpec(args.backend, args.device, precision, args.batch_size, sdpa=args.sdpa)
                engines[path] = build_static_batches(model, identity, ref, spec, refine=args.refine, gate=gate)  # called at once, for this path
                return [seg.backend for seg in engines[path].segmenters.values()]

            gated(args, ref, build)
            selection = engines[path].segmenters[engines[path].largest].selection
            print(f"{path}: static batches {', '.join(map(str, engines[path].sizes))}; {selection.describe()}")
        for s in specs:
            clear_report(args.report / s.id)
        shared = _shared_senders(args, curve, len(specs))
        clock = StopClock()  # the pipeline's and the lossless outputs': a signal ends the run within its grace
        streams = []
        for s, source in zip(specs, sources):
            batches = engines[s.reference]
            streams.append(Stream(source, batches, _outputs(args, s.id, source, shared, clock), _config(args), live=s.live, make_message=MessageFactory(batches.first, s.id)))
        if "zmq" in shared:
            print(f"publishing on {args.publish}: topics " + ", ".join(topic(s.id).decode() for s in specs) + (" with CURVE" if curve else ""))
            wait_for_subscribers(args, shared["zmq"])
        pipeline = Pipeline.of_streams(streams, _config(args), clock=clock)
        with _stop_on_signals(pipeline), StatusLine(pipeline_status(pipeline), enabled=args.progress):
            pipeline.run()
    return _report(args, specs, streams, pipeline)


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        live=args.live, queue_size=args.queue_size, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
        output_timeout=args.wait_timeout,
    )


def _shared_senders(args: argparse.Namespace, curve, users: int) -> dict[str, SharedSender]:
    shared = {}
    if args.publish:
        shared["zmq"] = SharedSender(Publisher(args.publish, curve=curve, insecure=args.insecure), users)
    if args.lossless:
        shared["lossless"] = SharedSender(LosslessSender(args.lossless, curve=curve, insecure=args.insecure), users)
        print(f"lossless PUSH on {args.lossless} (every stream)")
    return shared


def _outputs(args: argparse.Namespace, sid: str, source, shared: dict[str, SharedSender], clock: StopClock) -> list[Output]:
    outputs: list[Output] = []
    if "zmq" in shared:
        outputs.append(ZmqOutput(shared["zmq"], args.overlay))
    if "lossless" in shared:
        outputs.append(LosslessOutput(shared["lossless"], args.overlay, args.wait_timeout, clock))
    return outputs + file_outputs(args, source, args.record and args.record / sid, args.masks and args.masks / sid)


def _report(args: argparse.Namespace, specs: list[StreamSpec], streams: list[Stream], pipeline: Pipeline) -> int:
    """Per stream: its counts and end-to-end latency printed, its report in DIR/<id>/; DIR/streams.json indexes
    them. Exit 1 when any stream failed, was refused or lost frames to an output error."""
    index: dict[str, Any] = {"streams": [], "batches": {str(k): v for k, v in sorted(pipeline.batches.items())}}
    bad = False
    for spec, stream in zip(specs, streams):
        summary, seg = stream.summary, stream.engines.first
        report, json_path, _ = write_report(args.report / spec.id, spec.source, spec.pace, seg, summary)
        e2e = report["stages"][END_TO_END]
        print(f"[{spec.id}] {topic(spec.id).decode()}" + (f": refused: {summary.refused}" if summary.refused else ""))
        print_summary(summary)
        if e2e.get("count"):
            print(f"  end to end p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms over {e2e['count']} frames; report {json_path}")
        failed = bool(summary.failed or summary.output_errors or summary.refused)
        bad |= failed
        index["streams"].append({
            "id": spec.id, "topic": topic(spec.id).decode(), "source": spec.source, "reference": spec.reference, "reference_id": seg.reference.id,
            "mode": "live" if summary.live else "replay", "read": summary.read, "published": summary.published, "failed": len(summary.failed),
            "refused": summary.refused, "end_to_end_ms": {k: e2e.get(k) for k in ("p50", "p99")}, "report": str(json_path), "ok": not failed,
        })
    weights = streams[0].engines.first.weights
    index.update(weights=weights.to_dict(), random_weights=weights.is_random)
    if weights.is_random:
        index["note"] = "RANDOM WEIGHTS: labels are plumbing only, not bone"
    write_json_atomic(args.report / "streams.json", index)
    sizes = ", ".join(f"{n} frames x{count}" for n, count in sorted(pipeline.batches.items())) or "none"
    print(f"engine calls: {sizes}; index {args.report / 'streams.json'}")
    return 1 if bad else 0
