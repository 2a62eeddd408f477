"""The driver: plan what is not done yet, hand recordings to a pool of Ray actors, record every result.

Actors, not tasks: a worker builds its model and engine (on CUDA: warm-up, CUDA graphs, maybe TensorRT) once and
keeps it for every recording it gets; a task would rebuild it per recording. The driver keeps each actor busy with
one recording at a time (a slow exam never holds others back in an actor's queue), and when a worker process dies
it starts another in its place and gives the recording one more attempt."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from models.errors import BonestreamError
from pipeline.archive.manifest import Manifest
from pipeline.archive.recordings import Recording
from pipeline.archive.report import ArchiveReport
from pipeline.archive.worker import PARTIAL, ArchiveWorker, WorkerConfig

INSTALL = "Ray is not installed; install the archive extra: pip install 'bonestream[archive]'"
ATTEMPTS = 2  # a recording whose worker process dies is tried once more, on a new worker
LOCK = ".archive.lock"
_OOM = re.compile(r"(?<!CUDA )out of memory|low on memory|memory pressure|OutOfMemory", re.IGNORECASE)  # how Ray says it stopped a worker (not CUDA's)
_RAISED = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): (?P<message>.+)$")  # a traceback's last line


def import_ray(local: bool = True) -> ModuleType:
    """Ray is an optional extra, imported only by this command. Ray's ports listen on every interface, so a local
    instance runs with token authentication and a fresh random token (Ray reads both when it is imported): no other
    host can submit work to it or read frames through it. ``--address`` clusters bring their own token."""
    if local and "ray" not in sys.modules:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        import ray
    except ImportError:
        raise BonestreamError(INSTALL) from None
    return ray


@dataclass(frozen=True)
class ClusterOptions:
    """Where the workers run: a local Ray instance of ``workers * cpus_per_worker`` CPUs, or the cluster at ``address``."""

    workers: int = 2
    cpus_per_worker: int = 1
    gpu_fraction: float = 0.25  # of one card per worker when the device is cuda, so several workers share it
    address: str | None = None


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """An ``--address HOST:PORT`` that answers within ``timeout_s``: Ray itself would retry for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray resolves those itself, at once
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BonestreamError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


@contextmanager
def ray_session(ray: ModuleType, options: ClusterOptions) -> Iterator[None]:
    """Connect or start Ray quietly, and shut it down at the end; a session this process already has is used as is."""
    if ray.is_initialized():
        yield
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address:
        ray.init(address=options.address, **quiet)
    else:
        ray.init(num_cpus=options.workers * options.cpus_per_worker, include_dashboard=False, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """One run per output folder; under the lock, what killed runs left half-written in DIR/.partial/ goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BonestreamError(f"{out_dir}: another archive run is writing there") from None
        shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
        yield


def plan(recordings: Sequence[Recording], manifest: Manifest, reference_id: str) -> tuple[list[Recording], list[dict[str, Any]]]:
    """What to process, and what is skipped: done before for this reference (wherever the file was then), or the same
    content as a recording earlier in this run."""
    todo: list[Recording] = []
    skipped: list[dict[str, Any]] = []
    first: dict[str, str] = {}
    for rec in recordings:
        line = manifest.done(rec.sha256, reference_id)
        if line is not None:
            skipped.append({"key": rec.key, "done_as": line["key"]})
        elif rec.sha256 in first:
            skipped.append({"key": rec.key, "same_content_as": first[rec.sha256]})
        else:
            first[rec.sha256] = rec.key
            todo.append(rec)
    return todo, skipped


class WorkerPool:
    """``count`` ArchiveWorker actors, each holding its CPUs (and GPU fraction) for the whole run."""

    def __init__(self, ray: ModuleType, config: WorkerConfig, options: ClusterOptions, count: int) -> None:
        gpus = options.gpu_fraction if config.device == "cuda" else 0
        _check_room(ray, count, options.cpus_per_worker, gpus)
        self.ray = ray
        self.actor = ray.remote(ArchiveWorker).options(num_cpus=options.cpus_per_worker, num_gpus=gpus, max_restarts=0)
        self.config = config
        self.actors = [self.actor.remote(config) for _ in range(count)]
        try:  # a worker that cannot build its segmenter (weights, device) fails here, once, before any recording
            ray.get([a.pid.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.OutOfMemoryError) or _OOM.search(str(exc)):
                raise BonestreamError(f"a worker could not start: out of memory (Ray stops workers at 95 % of the node's memory; "
                                      f"each of the {count} loads its own model): pass fewer --workers") from None
            raise BonestreamError(f"a worker could not start: {_cause(exc)}") from None

    def replace(self, dead: Any) -> Any:
        self.ray.kill(dead, no_restart=True)
        fresh = self.actor.remote(self.config)
        self.actors[self.actors.index(dead)] = fresh
        return fresh


def _check_room(ray: ModuleType, workers: int, cpus: int, gpus: float) -> None:
    """Actors that do not fit would wait for resources for ever: say so instead, before any is started."""
    have = ray.cluster_resources()
    for name, each in (("CPU", cpus), ("GPU", gpus)):
        if workers * each > have.get(name, 0) + 1e-9:
            raise BonestreamError(
                f"{workers} workers x {each:g} {name} need {workers * each:g} {name}s, the Ray cluster has {have.get(name, 0):g}; "
                "pass fewer --workers" + (" or a smaller --gpu-fraction" if name == "GPU" else " or --cpus-per-worker")
            )


def _cause(exc: BaseException) -> str:
    """The worker's own error inside Ray's wrapping (the traceback's last ``Type: message`` line), else Ray's first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    raised = [m for m in map(_RAISED.match, lines) if m]
    if raised:
        return f"{raised[-1]['type'].rpartition('.')[2]}: {raised[-1]['message']}"
    return lines[0] if lines else type(exc).__name__


def process_all(
    pool: WorkerPool, todo: Sequence[Recording], manifest: Manifest, report: ArchiveReport, *, progress: bool = True
) -> None:
    """One recording per idle actor until all are done or failed; each result is in the manifest before the next."""
    ray = pool.ray
    queue = deque((rec, 1) for rec in todo)
    idle = list(pool.actors)
    flying: dict[Any, tuple[Any, Recording, int]] = {}
    with tqdm(total=len(todo), desc="recordings", unit="rec", disable=not progress) as bar:
        while queue or flying:
            while idle and queue:
                actor = idle.pop()
                rec, attempt = queue.popleft()
                flying[actor.process.remote(rec)] = (actor, rec, attempt)
            [ref], _ = ray.wait(list(flying), num_returns=1)
            actor, rec, attempt = flying.pop(ref)
            try:
                result = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as exc:  # the worker process died (killed, OOM, crash) with it in hand
                report.workers_lost += 1
                idle.append(pool.replace(actor))
                if attempt < ATTEMPTS:
                    report.retried += 1
                    queue.append((rec, attempt + 1))
                    continue
                result = {"status": "failed", "error": f"its worker process died on each of {attempt} attempts ({_cause(exc)})",
                          "frames": 0, "seconds": None, "worker": None}
            except ray.exceptions.RayError as exc:
                result = {"status": "failed", "error": _cause(exc), "frames": 0, "seconds": None, "worker": None}
                idle.append(actor)
            line = {
                "key": rec.key, "source": str(rec.path), "sha256": rec.sha256, "reference": report.reference, "attempt": attempt,
                **result, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            manifest.append(line)
            report.add(line)
            bar.update(1)
            bar.set_postfix(frames=report.frames, failed=len(report.failed), refresh=False)


def archive(
    recordings: Sequence[Recording], config: WorkerConfig, options: ClusterOptions, report: ArchiveReport, *, progress: bool = True
) -> ArchiveReport:
    """Every recording not yet done for this reference, segmented into DIR/<key>/; the report is written as
    DIR/archive_summary.json. Ray starts only when there is something to do."""
    ray = import_ray(local=options.address is None)
    out_dir = Path(config.out_dir)
    with exclusive(out_dir):
        manifest = Manifest.open(out_dir)
        report.manifest_unreadable = manifest.unreadable
        todo, report.skipped = plan(recordings, manifest, report.reference)
        report.recordings = len(recordings)
        if todo:
            started = time.perf_counter()
            with ray_session(ray, options):
                pool = WorkerPool(ray, config, options, min(options.workers, len(todo)))  # no idle models
                report.startup_s = time.perf_counter() - started
                report.workers = len(pool.actors)
                started = time.perf_counter()
                process_all(pool, todo, manifest, report, progress=progress)
                report.wall_s = time.perf_counter() - started
        report.write(out_dir)
    return report
