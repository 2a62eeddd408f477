"""TensorRT through torch-tensorrt (dynamo frontend, ahead of time), cached on disk as an ExportedProgram.

The graph handed to TensorRT is explicitly typed (``use_explicit_typing=True``, torch-tensorrt >= 2.5): the ViT in
the requested precision, LayerNorm and labelling in fp32 exactly as the graph's casts say, so TensorRT cannot pick
fp16 LayerNorm kernels that overflow. Built engines are tied to the GPU model and library versions (cache key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from pipeline.infer.backend import BackendUnavailable, require_cuda
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import check_precision, engine_module
from pipeline.infer.staging import StagedBackend, Staging


def import_torch_tensorrt() -> ModuleType:
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"tensorrt: torch-tensorrt is not importable ({exc}); install the torch-tensorrt build matching torch {torch.__version__}"
        ) from None
    return torch_tensorrt


@dataclass
class TensorRTBackend(StagedBackend):
    deployment: Deployment
    device: str = "cuda"
    precision: str = "fp32"
    batch: int = 1
    outputs: str = "fused"
    cache: EngineCache = field(default_factory=EngineCache)
    name: str = field(init=False, default="tensorrt")
    cache_hit: bool = field(init=False)
    last_timings_ms: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        dev = require_cuda(self.name, self.device)
        trt = import_torch_tensorrt()
        key = self.deployment.key("tensorrt", outputs=self.outputs, batch=self.batch, precision=self.precision, device=self.device)
        path, self.cache_hit = self.cache.fetch(key, ".ep", lambda p: self._build(trt, dev, p))
        self.compute = torch.export.load(str(path)).module()  # torch_tensorrt is imported: its runtime ops resolve
        self.staging = Staging(dev, self.deployment.shape(self.batch))

    def _build(self, trt: ModuleType, dev: torch.device, path: Path) -> None:
        module = engine_module(self.deployment.graph, self.deployment.input_size, self.precision, self.outputs).to(dev)
        example = torch.zeros(self.deployment.shape(self.batch), device=dev)
        exported = torch.export.export(module, (example,))
        compiled = trt.dynamo.compile(exported, inputs=[example], use_explicit_typing=True, min_block_size=1)
        trt.save(compiled, str(path), inputs=[example])

