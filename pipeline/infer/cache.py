"""On-disk engine cache, so ONNX exports and TensorRT builds (minutes on a GPU) happen once per deployment.

An engine is valid only for the exact weights, reference (its centroids are baked into the fused graph), input
size, stride, batch, precision, device and library versions it was built with; all of them go into the key, so
a change anywhere is a miss and a rebuild, never a stale engine. Entries are written to a temporary name and
renamed, so a crash or a concurrent build never leaves half an engine under a valid name. A JSON sidecar next to
each entry says what it is; facts learnt later (the parity gate's verdict) are recorded the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from models.weights import default_cache_dir
from pipeline.publish.files import write_json_atomic

# Distributions whose version can change what an engine computes or whether it loads.
LIBRARIES = ("bonestream", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "torch-tensorrt", "tensorrt", "openvino")


def library_versions() -> dict[str, str]:
    """Installed versions of LIBRARIES (absent ones are left out), plus the CUDA torch was built with."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    versions["cuda"] = str(torch.version.cuda)
    return versions


def device_identity(device: str) -> str:
    """``cpu``, or the GPU's name and compute capability: a TensorRT engine only runs on the GPU it was tuned for."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    major, minor = torch.cuda.get_device_capability(dev)
    return f"{torch.cuda.get_device_name(dev)} sm_{major}{minor}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``reference`` is empty for keys-only engines (no centroids inside)."""

    artifact: str  # what the file is, e.g. onnx-fused, onnx-keys, tensorrt-fused
    weights: str  # WeightsIdentity.label: the file's sha256, or random:SEED
    reference: str
    input_size: tuple[int, int]
    stride: int
    batch: int
    precision: str
    device: str  # device_identity()
    versions: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["versions"] = dict(self.versions)
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        h, w = self.input_size
        return f"{self.artifact}-{h}x{w}s{self.stride}-b{self.batch}-{self.precision}-{self.digest[:20]}"


class EngineCache:
    """Engines under ``root`` (default: the user cache's ``engines/``), one file or folder per EngineKey."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "engines"

    def path(self, key: EngineKey, suffix: str) -> Path:
        return self.root / f"{key.name}{suffix}"

    def fetch(self, key: EngineKey, suffix: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The entry's path and whether it was already there; on a miss ``build(tmp_path)`` writes it first.

        ``build`` writes a file, or fills a folder (for caches other libraries manage, such as ONNX Runtime's
        TensorRT engines) when ``suffix`` is empty.
        """
        final = self.path(key, suffix)
        if final.exists():
            return final, True
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key.name}.", suffix=".partial", dir=self.root))
        target = tmp if not suffix else tmp / final.name
        try:
            build(target)
            os.replace(target, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.record(key)
        return final, False

    def facts(self, key: EngineKey) -> dict[str, Any]:
        """What the key's sidecar records (empty when there is none)."""
        try:
            return json.loads(self._sidecar(key).read_text())
        except (OSError, ValueError):
            return {}

    def record(self, key: EngineKey, **facts: Any) -> None:
        """Add ``facts`` to the key's sidecar (which always names the key in full)."""
        write_json_atomic(self._sidecar(key), {**self.facts(key), "key": key.to_dict(), **facts})

    def _sidecar(self, key: EngineKey) -> Path:
        return self.root / f"{key.name}.json"
