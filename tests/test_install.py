"""setup.cfg's dependency rules, which pip cannot enforce, read from the file itself (an edit that breaks one fails
here instead of on a GPU machine), and what an install without ONNX Runtime says."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from calibration.calibrate import PRESETS
from pipeline.geometry_options import GEOMETRY_PRESETS
from pipeline.infer.backend import BackendUnavailable
from pipeline.infer.onnx_backend import import_onnxruntime

SETUP = Path(__file__).resolve().parents[1] / "setup.cfg"


def _requirements(text: str) -> dict[str, Requirement]:
    reqs = (Requirement(line.strip()) for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    return {r.name.lower(): r for r in reqs}


def _setup() -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    extras = {name: _requirements(text) for name, text in cfg["options.extras_require"].items()}
    return _requirements(cfg["options"]["install_requires"]), extras


def _minor(req: Requirement) -> tuple[int, int]:
    """The one minor version a ``~=X.Y.Z`` (or ``==X.Y.*``) specifier allows."""
    (spec,) = req.specifier
    assert spec.operator in ("~=", "==") and re.fullmatch(r"\d+\.\d+\.(\d+|\*)", spec.version), f"{req} is not pinned to a minor"
    version = Version(spec.version.replace("*", "0"))
    return version.major, version.minor


def test_onnxruntime_builds_never_come_together() -> None:
    base, extras = _setup()
    ort = {"onnxruntime", "onnxruntime-gpu"}
    assert not ort & set(base), "ONNX Runtime must come from an extra: [cpu] or [gpu], never the base install"
    for name, reqs in extras.items():
        assert len(ort & set(reqs)) <= 1, f"[{name}] pulls both onnxruntime and onnxruntime-gpu"
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" in extras["gpu"]


def test_gpu_builds_match_the_pinned_torch() -> None:
    base, extras = _setup()
    torch_minor = _minor(base["torch"])
    trt = extras["gpu"]["torch-tensorrt"]
    assert _minor(trt) == torch_minor  # torch-tensorrt X.Y requires torch X.Y
    assert Version("2.13.0+cpu") in base["torch"].specifier  # the CPU wheel the README installs satisfies the pin
    assert not any(name.startswith("faiss-gpu") for reqs in [base, *extras.values()] for name in reqs)


def test_every_calibration_preset_has_its_geometry() -> None:
    """The CLI offers GEOMETRY_PRESETS' names for --preset (light to import); calibration must know each of them."""
    assert sorted(GEOMETRY_PRESETS) == sorted(PRESETS)


def test_without_onnxruntime_the_backend_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without [cpu] or [gpu] has no onnxruntime: the ONNX backend is then unavailable with one line
    naming both extras (None in sys.modules makes the import fail as a missing package does)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable) as error:
        import_onnxruntime()
    message = str(error.value)
    assert "\n" not in message and "bonestream[cpu]" in message and "bonestream[gpu]" in message
