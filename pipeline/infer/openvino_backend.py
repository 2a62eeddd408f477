"""OpenVINO backend: the exported ViT compiled by OpenVINO's CPU plugin (oneDNN with AMX/AVX-512 kernels).

OpenVINO fuses what ONNX Runtime and eager torch run op by op (LayerNorm, GELU, residual adds and attention around
the matrix products) and runs bf16 on AMX tiles. Its CPU plugin silently *defaults* to bf16 on CPUs with AMX, so
every precision here is asked for explicitly: an fp32 engine is fp32, never bf16 under an fp32 label; and bf16 is
refused on CPUs that would emulate it (OpenVINO would quietly run fp32 there). Its precision hint applies to the
whole graph, the labelling included (bf16 distances flipped half the bone flags in a test while the keys kept a
cosine of 0.99995), so OpenVINO runs the keys-only graph and the labelling runs after it in fp32 torch.
An optional dependency: ``pip install 'bonestream[openvino]'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import torch

from pipeline.infer.backend import BackendUnavailable
from pipeline.infer.cache import EngineCache
from pipeline.infer.cpu_features import cpu_features
from pipeline.infer.deployment import Deployment
from pipeline.infer.export import INPUT_NAME, cached_onnx
from pipeline.infer.graph import OUTPUT_NAMES, fused_outputs, model_input
from pipeline.infer.onnx_backend import cpu_threads
from pipeline.infer.staging import StagedBackend, Staging, ready

HINTS = {"fp32": "f32", "bf16": "bf16"}  # OpenVINO's INFERENCE_PRECISION_HINT per precision


def import_openvino() -> ModuleType:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"openvino: not importable ({exc}); pip install 'bonestream[openvino]'") from None
    return openvino


def compile_config(precision: str) -> dict[str, object]:
    """One latency-bound stream: one inference at a time on every core this process may use (the frame path's other
    threads wait on it), the precision pinned rather than left to the plugin's default."""
    return {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": cpu_threads()}


@dataclass
class OpenVinoBackend(StagedBackend):
    """The keys-only ONNX core compiled by OpenVINO on the CPU, between torch's uint8 input step and fp32 labelling."""

    deployment: Deployment
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    outputs: str = "fused"
    cache: EngineCache = field(default_factory=EngineCache)
    name: str = field(init=False, default="openvino")
    last_timings_ms: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if torch.device(self.device).type != "cpu":
            raise BackendUnavailable(f"openvino: runs on the CPU only here, not {self.device}")
        if self.precision not in HINTS:
            raise BackendUnavailable(f"openvino: precision {self.precision} is not built here (fp32 or bf16)")
        if (reason := cpu_features().lacks(self.precision)) is not None:
            raise BackendUnavailable(f"openvino {self.precision}: {reason}")
        ov = import_openvino()
        model, _ = cached_onnx(self.deployment, batch=self.batch, precision="fp32", outputs="keys", cache=self.cache)
        core = ov.Core()
        # compiled blobs: OpenVINO 2026.4 keys them by model, not precision hint (an fp32 blob loaded for bf16 gave NaN keys)
        core.set_property({"CACHE_DIR": str(self.cache.root / "openvino" / self.precision)})
        self.compiled = core.compile_model(str(model), "CPU", compile_config(self.precision))
        self.request = self.compiled.create_infer_request()
        self.keys_port = self.compiled.output(OUTPUT_NAMES["keys"][0])
        self.labeller = self.deployment.labeller("cpu") if self.outputs == "fused" else None
        self.staging = Staging("cpu", self.deployment.plane_shape(self.batch))
        self.input_step = model_input(self.deployment, "cpu")
        self.compute = ready(self._compute, self.staging.input)

    def _compute(self, planes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keys = torch.from_numpy(self.request.infer({INPUT_NAME: self.input_step(planes).numpy()})[self.keys_port])
        return (keys,) if self.labeller is None else fused_outputs(self.labeller, keys)
