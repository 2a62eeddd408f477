"""ONNX Runtime backend: the exported fused graph on the CPU, CUDA or TensorRT execution provider.

ONNX Runtime silently drops an execution provider it cannot load (TensorRT or CUDA libraries missing) and runs
on the next one; the session's providers are checked after creation and a fallback is an error here, so the
caller reports it instead of benchmarking the CPU under a GPU label. On CUDA the session runs on torch's current
stream with inputs and outputs bound to the static device buffers, so CUDA events time it like the other backends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.placement import resolve
from pipeline.infer.backend import BackendUnavailable, require_cuda
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.export import INPUT_NAME, cached_onnx
from pipeline.infer.graph import OUTPUT_NAMES, model_input
from pipeline.infer.staging import Compute, StagedBackend, Staging, ready

if TYPE_CHECKING:
    import onnxruntime as ort

PROVIDERS = {"onnxruntime": "CUDAExecutionProvider", "onnxruntime-trt": "TensorrtExecutionProvider"}  # on CUDA
ONNX_PRECISIONS = ("fp32", "fp16", "int8")  # ONNX Conv has no bfloat16 type (opset 18)
ORT_TYPES = {"tensor(float)": (np.float32, torch.float32), "tensor(uint8)": (np.uint8, torch.uint8)}  # graph outputs


def import_onnxruntime() -> ModuleType:
    """ONNX Runtime, an optional dependency: ``bonestream[cpu]`` brings ``onnxruntime``, ``bonestream[gpu]``
    ``onnxruntime-gpu``. The two install the same module over each other, so with both only one's providers load."""
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            installed.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    if len(installed) == 2:
        raise BackendUnavailable(
            f"onnxruntime: {' and '.join(installed)} are both installed and overwrite each other's module; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu (CUDA) or onnxruntime (CPU)"
        )
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            f"onnxruntime: not importable ({exc}); pip install 'bonestream[cpu]' (onnxruntime) or, on CUDA machines, "
            "'bonestream[gpu]' (onnxruntime-gpu)"
        ) from None
    return onnxruntime


def cpu_threads() -> int:
    """Physical cores this process may use: ONNX Runtime's default counts hyper-threads, which only contend."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def session_options() -> ort.SessionOptions:
    """Full graph optimisation, one intra-op thread per core, and no spin-waiting after a run: on a small CPU the
    spinning threads would take the cores that capture, preprocessing and publishing need between frames."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = cpu_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def provider_options(name: str, device: torch.device, precision: str, engine_dir: Path | None, compute_stream: torch.cuda.Stream | None = None) -> list[tuple[str, dict]]:
    """Execution providers in priority order for ``name`` on ``device``; on CUDA ONNX Runtime launches on
    ``compute_stream`` (the staging's own stream: the one the input step and the timing events use) for the
    session's life."""
    if device.type == "cpu":
        return [("CPUExecutionProvider", {})]
    stream = str(compute_stream.cuda_stream)
    cuda = ("CUDAExecutionProvider", {"device_id": device.index, "user_compute_stream": stream})
    if name == "onnxruntime":
        return [cuda]
    trt = {
        "device_id": device.index,
        "user_compute_stream": stream,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(engine_dir),
    }
    return [("TensorrtExecutionProvider", trt), cuda]


@dataclass
class OnnxRuntimeBackend(StagedBackend):
    """``name`` onnxruntime (CPU or CUDA execution provider by device) or onnxruntime-trt (TensorRT EP)."""

    deployment: Deployment
    name: str = "onnxruntime"
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    outputs: str = "fused"
    cache: EngineCache = field(default_factory=EngineCache)
    cache_hit: bool = field(init=False)
    last_timings_ms: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        dev = torch.device(self.device)
        if dev.type != "cpu":
            require_cuda(self.name, self.device)
            dev = resolve(dev)  # "cuda" is the current device, by index: ONNX Runtime needs its device id
        if self.precision not in ONNX_PRECISIONS:
            raise BackendUnavailable(f"{self.name}: precision {self.precision} cannot be exported (ONNX Conv has no bfloat16)")
        if self.precision == "int8" and dev.type != "cpu":
            raise BackendUnavailable(f"{self.name}: int8 (dynamic quantisation) runs on the CPU execution provider only")
        if self.name not in PROVIDERS or (dev.type == "cpu" and self.name != "onnxruntime"):
            raise BackendUnavailable(f"{self.name}: not an ONNX Runtime backend for {self.device}")
        wanted = "CPUExecutionProvider" if dev.type == "cpu" else PROVIDERS[self.name]
        ort = import_onnxruntime()
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(
                f"{self.name}: onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(ort.get_available_providers())}); "
                "on CUDA install bonestream[gpu] (onnxruntime-gpu, without onnxruntime) with matching CUDA/TensorRT libraries"
            )
        model, self.cache_hit = cached_onnx(self.deployment, batch=self.batch, precision=self.precision, outputs=self.outputs, cache=self.cache)
        engine_dir = None
        if wanted == "TensorrtExecutionProvider":
            key = self.deployment.key("ort-trt", outputs=self.outputs, batch=self.batch, precision=self.precision, device=self.device)
            engine_dir, _ = self.cache.fetch(key, "", lambda path: path.mkdir(parents=True, exist_ok=True))
        self.staging = Staging(dev, self.deployment.plane_shape(self.batch))
        providers = provider_options(self.name, dev, self.precision, engine_dir, self.staging.stream)
        self.session = ort.InferenceSession(str(model), session_options(), providers=providers)
        if self.session.get_providers()[0] != wanted:
            raise BackendUnavailable(
                f"{self.name}: onnxruntime fell back to {self.session.get_providers()} instead of {wanted} "
                "(its libraries failed to load; see onnxruntime's log above)"
            )
        self.input_step = model_input(self.deployment, dev)
        # never captured: ONNX Runtime launches on the stream it was given at session creation, not torch's capture
        # stream; warmed up on that stream, as it runs
        with self.staging.active():
            self.compute = ready(self._host_compute if dev.type == "cpu" else self._bind_device(), self.staging.input, capture=False)

    def _host_compute(self, planes: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.session.run(list(OUTPUT_NAMES[self.outputs]), {INPUT_NAME: self.input_step(planes).numpy()})
        return [torch.from_numpy(o) for o in outputs]

    def _bind_device(self) -> Compute:
        """IO binding on static device buffers: no host round trip inside ONNX Runtime."""
        dev = self.staging.device
        binding = self.session.io_binding()
        pixels = torch.empty(self.deployment.pixel_shape(self.batch), dtype=torch.float32, device=dev)
        binding.bind_input(INPUT_NAME, "cuda", dev.index, np.float32, tuple(pixels.shape), pixels.data_ptr())
        outputs = []
        for meta in self.session.get_outputs():
            np_type, torch_type = ORT_TYPES[meta.type]
            out = torch.empty(tuple(meta.shape), dtype=torch_type, device=dev)
            binding.bind_output(meta.name, "cuda", dev.index, np_type, tuple(out.shape), out.data_ptr())
            outputs.append(out)

        def compute(planes: torch.Tensor) -> list[torch.Tensor]:
            pixels.copy_(self.input_step(planes))
            self.session.run_with_iobinding(binding)
            return outputs

        return compute
