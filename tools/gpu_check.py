"""Every GPU check in one call, for a lent GPU's short lease (driven by ``tools/gpu_check.sh``).

    bash tools/gpu_check.sh --bundle gpu-bundle                 # on the GPU machine (carry gpu-bundle)
    bash tools/gpu_check.sh --device cpu --smoke                # the same steps at toy size on a CPU

Unpacks the bundle (``tools/gpu_bundle.py``: the wheels the GPU machine lacks, and a clip) into a temporary folder
put on ``PYTHONPATH`` after the repository, then runs each step as its own process under a hard timeout, within one
overall budget (default 9 minutes): a step that fails or runs out of time is logged with its error tail and the next
one runs. One JSON line per step goes to ``<out>/gpu_check.jsonl`` as each ends (the engine grid also writes one per
row), every step's own results and log land under ``<out>`` (default ``$OUT``, else ``./gpu-check``), so a run cut
off still leaves its numbers. Standard library only: it runs before the bundle is on the path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CLIP = REPO.parent / "shared" / "data" / "ultrabones100k" / "sweep_clip_frames150-889_20fps.mp4"
BUNDLE_MODULES = ("av", "faiss", "zmq", "pydicom", "pylibjpeg", "pyigtl", "psutil")  # what the bundle brings
OPTIONAL = ("torchvision",)  # nvJPEG only: its rows say why they are skipped without it
TAIL_CHARS = 3000  # of a failed step's log, in its JSON line
KILL_GRACE_S = 10  # after SIGTERM (``run`` writes its report on it), before SIGKILL


@dataclass(frozen=True)
class Step:
    """One process: its name (also its folder and log under the output folder), its argv, its hard timeout."""

    name: str
    argv: list[str]
    budget_s: int
    needs_cuda: bool = False


@dataclass(frozen=True)
class CheckSettings:
    device: str = "cuda"
    smoke: bool = False
    out: Path = Path("gpu-check")
    bundle: Path | None = None
    budget_s: int = 540  # the whole run, unpacking included: a device call may take 10 minutes
    python: str = sys.executable

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class Context:
    """What the steps share: the settings, the clip (the bundle's, else the shared one; none in smoke), their environment."""

    s: CheckSettings
    clip: Path | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """A ``bonestream`` source: the clip, or the phantom where there is none."""
        return str(self.clip) if self.clip else "phantom:12"

    def clip_args(self) -> list[str]:
        return ["--clip", str(self.clip)] if self.clip else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cuda_test_files() -> list[str]:
    """Test files with a test that skips without CUDA; ``-k "cuda or gpu"`` picks those tests from them."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "cuda.is_available()" in p.read_text())


def steps(c: Context) -> list[Step]:
    """The steps in order of worth (each is cut at its budget; the overall budget cuts the last ones)."""
    s, py, out = c.s, [c.s.python], c.s.out

    def budget(gpu: int, smoke: int) -> int:  # a loaded 2-core CPU is slower at toy size than the GPU at full size
        return smoke if s.smoke else gpu

    cli = [*py, "-m", "pipeline.cli"]
    size = ["--input-size", "32x40" if s.smoke else "224x224"]
    grid = (["--precisions", "fp32,bf16", "--batch-sizes", "1,2", "--sdpa-kernels", "math", "--calls", "3", "--warmup", "1", "--frames", "4"]
            if s.smoke else ["--row-seconds", "1.5", "--budget-s", "195"])
    bench = (["--precisions", "fp32", "--batch-sizes", "1,2", "--frames", "4", "--warmup", "1"] if s.smoke else
             ["--precisions", "bf16", "--batch-sizes", "1,8,32", "--frames", "120", "--warmup", "3"])
    reference = out / "calibrate" / "reference.json"
    # bf16 behind the parity gate, checked on the calibration frames (the smoke run takes the same path on the CPU)
    run = [*cli, "run", "--reference", str(reference), "--weights", "random:0", "--device", s.device, "--pace", "max",
           "--no-progress", "--backend", "torch", "--precision", "bf16", "--calibration-sources", c.source]
    streams = 2 if s.smoke else 8
    multistream = ["--streams", "1,2", "--fps", "5", "--seconds", "1"] if s.smoke else ["--streams", "1,8,32", "--fps", "30", "--seconds", "5"]
    return [
        Step("nvidia-smi", ["nvidia-smi"], 15, needs_cuda=True),
        Step("versions", [*py, str(Path(__file__).resolve()), "--versions"], budget(20, 40)),
        Step("cuda-tests", [*py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *cuda_test_files(), "-k", "cuda or gpu"], budget(60, 90)),
        Step("engine-grid", [*py, "-m", "benchmarks.engine_grid", "--device", s.device, *size, *grid, *c.clip_args(), "--out", str(out / "engine-grid")], budget(220, 150)),
        Step("bench", [*py, "-m", "benchmarks.bench", "--device", s.device, "--backends", "torch", *bench, "--baseline-frames", "0",
                       "--streams", "0", *size, *c.clip_args(), "--out", str(out / "bench")], budget(60, 90)),
        Step("calibrate", [*cli, "calibrate", c.source, "--out", str(reference), "--weights", "random:0", "--count", "2" if s.smoke else "4",
                           "--device", s.device, *size, "--no-progress"], budget(30, 60)),
        Step("run-1", [*run, c.source, "--publish", f"tcp://127.0.0.1:{free_port()}", "--report", str(out / "run-1")], budget(25, 60)),
        Step(f"run-{streams}", [*run, *[c.source] * streams, "--publish", f"tcp://127.0.0.1:{free_port()}", "--report", str(out / f"run-{streams}")], budget(35, 60)),
        Step("multistream", [*py, "-m", "benchmarks.multistream", "--device", s.device, *multistream, *size, "--out", str(out / "multistream")], budget(50, 90)),
    ]


def signal_group(pid: int, sig: int) -> None:
    """Signal a step's process group; one that ended in the meantime is no error."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class Log:
    """``gpu_check.jsonl``: one JSON line per step, flushed as it ends; each also printed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def write(self, row: dict) -> None:
        line = json.dumps(row)
        with self.path.open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)


def run_step(step: Step, c: Context, timeout_s: float) -> dict:
    """Run ``step`` in its own process group, its output to ``<out>/logs/<name>.log``; on timeout SIGTERM the group,
    then SIGKILL after a grace."""
    s = c.s
    row: dict = {"step": step.name, "budget_s": step.budget_s, "command": " ".join(step.argv)}
    if step.needs_cuda and not s.cuda:
        return {**row, "status": "skipped", "reason": f"--device {s.device}"}
    if shutil.which(step.argv[0]) is None:
        return {**row, "status": "skipped", "reason": f"{step.argv[0]} not found"}
    if timeout_s < 5:
        return {**row, "status": "skipped", "reason": "the overall budget is spent"}
    log_path = s.out / "logs" / f"{step.name}.log"
    (s.out / step.name).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(step.argv, cwd=REPO, env=c.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, status = proc.wait(timeout=timeout_s), None
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = proc.returncode, "timeout"
    wall = time.perf_counter() - start
    status = status or ("ok" if rc == 0 else "failed")
    outputs = sorted(str(p.relative_to(s.out)) for p in (s.out / step.name).rglob("*") if p.is_file())
    row.update(status=status, rc=rc, wall_s=round(wall, 2), timeout_s=round(timeout_s, 1), log=str(log_path.relative_to(s.out)), outputs=outputs)
    if status != "ok":
        row["error_tail"] = log_path.read_text(errors="replace")[-TAIL_CHARS:]
    return row


def unpack(bundle: Path, into: Path) -> dict:
    """The bundle's site-packages into ``into``; what and how long."""
    start = time.perf_counter()
    with tarfile.open(bundle / "site.tar.xz") as tar:
        tar.extractall(into, filter="data")
    return {"step": "unpack", "status": "ok", "bundle": str(bundle), "site": str(into), "wall_s": round(time.perf_counter() - start, 2)}


def versions() -> int:
    """Print the versions of the libraries the steps use as one JSON line; 1 when one of them cannot be imported."""
    import importlib

    found: dict[str, object] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "cv2", *OPTIONAL, *BUNDLE_MODULES):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "present")
        except Exception as exc:  # a missing or broken library is the finding
            found[name] = f"MISSING: {type(exc).__name__}: {exc}"
    import torch

    found.update(cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                 gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    print(json.dumps(found), flush=True)
    return 1 if any(str(v).startswith("MISSING") for k, v in found.items() if k not in OPTIONAL) else 0


def check(s: CheckSettings) -> int:
    """Run every step within ``s.budget_s``; 0 when all that ran passed, else 1."""
    started = time.monotonic()
    deadline = started + s.budget_s
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "logs").mkdir(exist_ok=True)
    log = Log(s.out / "gpu_check.jsonl")
    log.write({"step": "start", "device": s.device, "smoke": s.smoke, "budget_s": s.budget_s, "host": platform.node(),
               "python": platform.python_version(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "note": "random weights: latency and throughput only"})
    with tempfile.TemporaryDirectory(prefix="bonestream-site-") as site:
        path = [str(REPO)]
        clip = None if s.smoke else SHARED_CLIP if SHARED_CLIP.is_file() else None  # smoke: the phantom, small and everywhere
        if s.bundle:
            log.write(unpack(s.bundle, Path(site)))
            path.append(site)
            clip = s.bundle / "clip.mp4" if (s.bundle / "clip.mp4").is_file() else clip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, *filter(None, [os.environ.get("PYTHONPATH")])]),
               "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if s.smoke else {})}
        c = Context(s, clip, env)
        results = []
        for step in steps(c):
            print(f"--- {step.name} (budget {step.budget_s} s)", flush=True)
            row = run_step(step, c, min(step.budget_s, deadline - time.monotonic() - KILL_GRACE_S))
            log.write(row)
            results.append(row["status"])
    failed = [r for r in results if r in ("failed", "timeout")]
    log.write({"step": "summary", "status": "failed" if failed else "ok", "steps": len(results),
               "ok": results.count("ok"), "failed": len(failed), "skipped": results.count("skipped"),
               "wall_s": round(time.monotonic() - started, 1)})
    grid_md = s.out / "engine-grid" / "engine_grid.md"
    if grid_md.is_file():
        print(grid_md.read_text(), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--smoke", action="store_true", help="toy sizes (32x40 input, few frames, batches 1,2): the CPU's end-to-end check")
    p.add_argument("--bundle", type=Path, help="folder from tools/gpu_bundle.py (site.tar.xz, clip.mp4); none: use this environment")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"), help="results folder (default $OUT, else ./gpu-check)")
    p.add_argument("--budget", dest="budget_s", type=int, default=CheckSettings.budget_s, help="seconds for the whole run (default 540)")
    p.add_argument("--versions", action="store_true", help="only print the libraries' versions (the versions step)")
    args = p.parse_args(argv)
    if args.versions:
        return versions()
    return check(CheckSettings(args.device, args.smoke, args.out.resolve(), args.bundle.resolve() if args.bundle else None, args.budget_s))


if __name__ == "__main__":
    sys.exit(main())
