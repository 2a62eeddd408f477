"""bonestream archive INPUT... --reference REF --out DIR"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.errors import BonestreamError
from pipeline.commands.common import add_model_arguments, add_refine_argument, announce_weights, weights_for
from pipeline.commands.numbers import FRACTION, POSITIVE_INT, number
from pipeline.commands.paths import check_output_dir

WORKERS = number(int, 1, 4096)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video or DICOM files, or folders walked for them")
    p.add_argument("--reference", required=True, help="reference file from `bonestream calibrate`")
    p.add_argument("--out", required=True, help="output folder: <recording>/ (masks, overlay, summary.json), manifest.jsonl, archive_summary.json")
    p.add_argument("--workers", type=WORKERS, default=2, help="Ray actors, each with its own model (default 2)")
    p.add_argument("--cpus-per-worker", type=number(int, 1, 256), default=1, help="CPUs (torch threads) per worker (default 1)")
    p.add_argument("--gpu-fraction", type=FRACTION, default=0.25, help="share of one GPU per worker with --device cuda (default 0.25: four per card)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (e.g. auto or ray://head:10001); default: a local instance")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1, help="frames per engine call (default 1)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="masks and summaries only")
    add_model_arguments(p)
    add_refine_argument(p)


def run(args: argparse.Namespace) -> int:
    from calibration.reference import Reference
    from models.weights import WeightsIdentity
    from pipeline.archive.recordings import find_recordings, hashed
    from pipeline.archive.replay import ClusterOptions, archive, import_ray, reachable
    from pipeline.archive.report import SUMMARY, ArchiveReport
    from pipeline.archive.worker import WorkerConfig
    from pipeline.memory import check_workers

    import_ray(local=args.address is None)
    out_dir = Path(args.out).resolve()
    check_output_dir(out_dir, "--out")
    if args.device not in ("cpu", "cuda"):
        raise BonestreamError(f"--device {args.device}: archive workers take cpu or cuda (Ray gives each worker its card)")
    reference = Reference.load(args.reference)
    if args.address is None:  # a local Ray: every worker is a process on this machine, with its own model
        check_workers(args.workers, args.batch_size, reference.geometry.input_size, reference.geometry.stride)
    weights = weights_for(reference, args.weights)
    recordings = find_recordings(args.inputs, out_dir)
    if args.address:
        reachable(args.address)
    identity = WeightsIdentity.from_dict(reference.weights)
    announce_weights(identity.label)
    print(f"{len(recordings)} recordings, reference {reference.id}")
    # fp32 unless a precision is named: no calibration frames here for the parity gate behind CUDA's bf16 default
    config = WorkerConfig(
        str(Path(args.reference).resolve()), weights, str(out_dir), device=args.device, backend=args.backend,
        precision=args.precision or "fp32", batch_size=args.batch_size, refine=args.refine, overlay=args.overlay, threads=args.cpus_per_worker,
    )
    options = ClusterOptions(args.workers, args.cpus_per_worker, args.gpu_fraction, args.address)
    report = ArchiveReport(reference.id, identity.label, identity.is_random)
    archive(hashed(recordings, progress=args.progress), config, options, report, progress=args.progress)
    print(report.table())
    print(f"wrote {out_dir / SUMMARY}")
    return 1 if report.failed else 0
