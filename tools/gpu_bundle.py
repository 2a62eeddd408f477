"""Build, on a CPU machine with PyPI, the one folder a lent GPU needs beside the repository: the cp312 wheels of what
bonestream imports that the GPU machine lacks, unpacked into one site-packages and xz'd, plus a 120-frame clip.

    python tools/gpu_bundle.py [--out gpu-bundle] [--frames 120]

The GPU machine (docs: /work/shared/docs/gpu.md) has Python 3.12, torch, torchvision, numpy 2, OpenCV, ONNX, tqdm,
matplotlib and pytest, no network and no build tools: wheels are zip files, so unzipping them into one folder put on
``PYTHONPATH`` installs them without pip (``tools/gpu_check.sh --bundle`` does that). The versions are the ones
installed here, so the GPU runs the versions the CPU tests ran. Writes ``<out>/site.tar.xz``, ``<out>/clip.mp4`` and
``<out>/manifest.json`` and prints the sizes; the device tool carries at most 64 MiB, so a bundle over that is refused.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# distributions the GPU machine already has (gpu.md), and their usual dependencies: never shadowed from the bundle
ON_GPU_MACHINE = frozenset({
    "torch", "torchvision", "numpy", "opencv-python", "opencv-python-headless", "onnx", "onnxscript", "onnxruntime",
    "tqdm", "matplotlib", "pillow", "packaging", "pytest", "hypothesis", "tomli",  # tomli: Python < 3.11 only
})
PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{v}_x86_64" for v in (17, 24, 26, 27, 28, 31, 34)))
SOURCE_ONLY = ("crcmod",)  # pyigtl's dependency, an sdist only; its pure-Python fallback loads where its C part cannot
CARRY_LIMIT = 64 * 2**20  # what the device tool carries per call
STRIPPED = ("__pycache__", "tests", "test")  # folder names left out of the site-packages


@dataclass(frozen=True)
class BundleSettings:
    out: Path = Path("gpu-bundle")
    frames: int = 120
    clip: Path = REPO.parent / "shared" / "data" / "ultrabones100k" / "sweep_clip_frames150-889_20fps.mp4"
    python_version: str = "3.12"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def bundled_requirements() -> list[str]:
    """setup.cfg's install_requires less what the GPU machine has, pinned to the versions installed here."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    names = [_name(line) for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    wanted = [n for n in names if n not in ON_GPU_MACHINE]
    return [f"{n}=={metadata.version(n)}" for n in wanted]


def download(requirements: list[str], wheel_dir: Path, python_version: str) -> None:
    """cp312 manylinux wheels of ``requirements`` (their dependencies are listed there or on the GPU machine), and
    wheels built here from the source-only ones."""
    pip = [sys.executable, "-m", "pip"]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    abi = "cp" + python_version.replace(".", "")
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", "--abi", abi, *platforms, "-d", str(wheel_dir), *requirements], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheel_dir), *SOURCE_ONLY], check=True)


def install_wheels(wheels: list[Path], site: Path) -> None:
    """Unzip each wheel into ``site`` (a wheel's root is its purelib/platlib; ``*.data/purelib`` and ``platlib``
    move there, scripts and headers are dropped), then leave out caches and test folders."""
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    for data in site.glob("*.data"):
        for lib in ("purelib", "platlib"):
            for item in (data / lib).glob("*") if (data / lib).is_dir() else ():
                shutil.move(str(item), site / item.name)
        shutil.rmtree(data)
    for folder in sorted((p for p in site.rglob("*") if p.is_dir() and p.name in STRIPPED), key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(folder, ignore_errors=True)


def pack(site: Path, archive: Path) -> Path:
    """``site``'s contents as ``archive`` (tar, xz), paths relative to ``site``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz", preset=6) as tar:
        for item in sorted(site.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def cut_clip(source: Path, target: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``source`` re-encoded (H.264, same size and rate) as ``target``."""
    import av  # the CPU machine's own PyAV; imported here so the packing above needs none of it

    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream("libx264", rate=stream_in.average_rate)
        stream_out.width, stream_out.height, stream_out.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream_out.options = {"crf": "23"}
        for i, frame in enumerate(src.decode(stream_in)):
            if i >= frames:
                break
            frame.pts = None
            dst.mux(stream_out.encode(frame))
        dst.mux(stream_out.encode(None))
    return target


def build(s: BundleSettings) -> dict:
    s.out.mkdir(parents=True, exist_ok=True)
    requirements = bundled_requirements()
    print("bundling: " + " ".join(requirements) + " + " + " ".join(SOURCE_ONLY), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel_dir, site = Path(tmp, "wheels"), Path(tmp, "site")
        download(requirements, wheel_dir, s.python_version)
        wheels = sorted(wheel_dir.glob("*.whl"))
        install_wheels(wheels, site)
        print("packing (xz) ...", flush=True)
        archive = pack(site, s.out / "site.tar.xz")
    clip = cut_clip(s.clip, s.out / "clip.mp4", s.frames)
    manifest = {
        "python": s.python_version,
        "wheels": [w.name for w in wheels],
        "clip": {"source": s.clip.name, "frames": s.frames},
        "bytes": {p.name: p.stat().st_size for p in (archive, clip)},
    }
    (s.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in s.out.iterdir())
    print(f"wrote {s.out}: site.tar.xz {archive.stat().st_size / 2**20:.1f} MiB, clip.mp4 {clip.stat().st_size / 2**20:.1f} MiB, "
          f"total {total / 2**20:.1f} MiB (carry limit {CARRY_LIMIT / 2**20:.0f} MiB)")
    if total > CARRY_LIMIT:
        raise SystemExit(f"{s.out} is {total / 2**20:.1f} MiB: over the device tool's {CARRY_LIMIT / 2**20:.0f} MiB")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=BundleSettings.out, help="bundle folder (default gpu-bundle, git-ignored)")
    p.add_argument("--frames", type=int, default=BundleSettings.frames, help="frames of the clip (default 120)")
    p.add_argument("--clip", type=Path, default=BundleSettings.clip, help="video to cut the clip from (default: the shared sweep clip)")
    args = p.parse_args(argv)
    build(BundleSettings(args.out, args.frames, args.clip))
    return 0


if __name__ == "__main__":
    sys.exit(main())
