"""TensorRT through torch-tensorrt (dynamo frontend, ahead of time), cached on disk as an ExportedProgram.

Versions: torch-tensorrt is built for one torch minor. setup.cfg's ``[gpu]`` extra pins ``torch-tensorrt~=2.13.0`` for
the torch 2.13 install; the GPU machine lent to this project has torch 2.11, where torch-tensorrt 2.11 is the match.
The calls here are written to 2.11's API (the notes below say "2.11" where a behaviour was read there). Neither
version could be installed in this environment (TensorRT is not downloadable here): nothing below has run.

The core (float32 pixels -> outputs) is exported with static shapes and compiled whole into one engine
(``require_full_compilation``); a graph TensorRT cannot take entirely is refused with the ops that would have run
in torch, never run as a hybrid under the TensorRT label. The engine is strongly typed (``use_explicit_typing``,
the 2.11 default): the ViT in the requested precision, LayerNorm in fp32 for fp16 (bf16 in a bf16 engine: no
overflow in fp32's exponent range) and labelling in fp32 exactly as the graph's casts say, so TensorRT cannot pick
fp16 LayerNorm kernels that overflow; ``enabled_precisions`` is therefore left unset
(2.11 asserts it is only fp32 under explicit typing). ``disable_tf32`` keeps every fp32 layer (the whole fp32
ViT, and LayerNorm and the distances of reduced-precision engines) in true fp32. (torch leaves cuDNN's TF32 on for
convolutions by default: the torch backend's patch embedding may run in TF32 on Ampere and later.)

No uint8 inside the engine: torch-tensorrt 2.11 converts no cast to uint8 (``_to_copy`` accepts float, int32,
int64, bool, int8, fp16, bf16) and TensorRT constants cannot be uint8, so the engine returns the labeller's bool
flag and torch casts it to the uint8 mask after the engine; the uint8 -> float input step runs in torch in front.
At run time TensorRT's own CUDA-graph runtime (``torch_tensorrt.runtime.enable_cudagraphs``) replays the engine,
so the backend does not capture it again. Built engines are tied to the GPU model and library versions (cache key).
"""

from __future__ import annotations

import operator
import threading
import warnings
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import torch
from torch import nn

from models.placement import device_guard
from pipeline.infer.backend import BackendUnavailable, require_cuda
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import CoreGraph, check_precision, engine_module, model_input
from pipeline.infer.staging import StagedBackend, Staging

WARMUP_CALLS = 3  # the first call records TensorRT's CUDA graph; the rest run it as a live frame will
try:
    from torch.export._unlift import GuardsFn  # torch >= 2.9 puts input checks (no compute) in unlifted modules
except ImportError:
    GuardsFn = ()  # type: ignore[assignment,misc]


class CudaGraphMode:
    """torch-tensorrt's CUDA-graph runtime mode is process-wide (``enable_cudagraphs`` sets it until its context
    exits): entered by the first TensorRT backend and left when the last one is released, so closing one backend
    never takes the graphs from another."""

    _lock = threading.Lock()
    _users = 0
    _stack: ExitStack | None = None

    @classmethod
    def acquire(cls, trt: ModuleType, module: nn.Module) -> nn.Module:
        """``module`` to call in the mode (a whole-graph engine is returned as it is)."""
        with cls._lock:
            if cls._users == 0:
                cls._stack = ExitStack()
                module = cls._stack.enter_context(trt.runtime.enable_cudagraphs(module))
            cls._users += 1
            return module

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._stack is not None:
                cls._stack.close()
                cls._stack = None


def import_torch_tensorrt() -> ModuleType:
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"tensorrt: torch-tensorrt is not importable ({exc}); install the torch-tensorrt build matching torch {torch.__version__}"
        ) from None
    return torch_tensorrt


class TensorRTCore(nn.Module):
    """What TensorRT compiles: the core with its bool bone flag instead of the uint8 mask (TensorRT takes no cast to
    uint8), float32 pixels in. Keys-only cores are passed through unchanged."""

    def __init__(self, core: CoreGraph) -> None:
        super().__init__()
        self.core = core

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.core.labeller is None:
            return self.core(pixels)
        _, flag, margin = self.core.labeller(self.core.vit.encode(pixels).keys)
        return flag, margin


def export_core(deployment: Deployment, precision: str, outputs: str, device: str | torch.device, batch: int = 1) -> torch.export.ExportedProgram:
    """The TensorRT-facing core, built fresh on ``device`` and exported at the static ``pixel_shape(batch)``.

    Needs no TensorRT (it is tested on the CPU); torch.export raises on any graph break, so success means one graph."""
    with device_guard(device) as dev:
        core = TensorRTCore(engine_module(deployment, precision, outputs, dev).core).eval()
        example = torch.zeros(deployment.pixel_shape(batch), dtype=torch.float32, device=dev)
        return torch.export.export(core, (example,))


def torch_fallbacks(gm: torch.fx.GraphModule, is_engine: Callable[[str, nn.Module], bool]) -> tuple[list[str], int]:
    """(ops of ``gm`` that run in torch, number of TensorRT engines), through nested submodules. Tuple unpacking
    (``getitem``), assertions and torch.export's input guards compute nothing and are not counted."""
    ops: list[str] = []
    engines = 0
    for node in gm.graph.nodes:
        if node.op == "call_module":
            sub = gm.get_submodule(node.target)
            if is_engine(node.target, sub):
                engines += 1
            elif isinstance(sub, torch.fx.GraphModule):
                inner, n = torch_fallbacks(sub, is_engine)
                ops += inner
                engines += n
            elif not isinstance(sub, GuardsFn):
                ops.append(f"{node.target} ({type(sub).__name__})")
        elif node.op == "call_function" and node.target is not operator.getitem:
            if str(node.target).startswith("tensorrt.execute_engine"):
                engines += 1
            elif not str(node.target).startswith("aten._assert"):
                ops.append(str(node.target))
        elif node.op == "call_method":
            ops.append(f"Tensor.{node.target}")
    return ops, engines


def refusal(ops: Sequence[str], engines: int) -> str:
    """Why a compiled graph is not one TensorRT engine, naming the distinct ops left to torch."""
    names = sorted(set(ops))
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"tensorrt: the graph does not compile into one engine ({engines} engines; ops left to torch: {shown or 'none'})"


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
        """Builds (or loads) the engine, enters TensorRT's CUDA-graph runtime and warms up, all under the device's
        guard: the first live frame finds the engine ready."""
        check_precision(self.precision)
        dev = require_cuda(self.name, self.device)
        trt = import_torch_tensorrt()
        key = self.deployment.key("tensorrt", outputs=self.outputs, batch=self.batch, precision=self.precision, device=self.device)
        with device_guard(dev) as dev:
            path, self.cache_hit = self.cache.fetch(key, ".pt2", lambda p: self._build(trt, dev, p))
            # a path, not a file object: torch_tensorrt.load tries TorchScript first and would hand torch.export a
            # consumed file; torch.export wants names ending .pt2
            loaded = trt.load(str(path)).module()  # torch_tensorrt is imported, so its engine class and op resolve
            self._engine = CudaGraphMode.acquire(trt, loaded)
            self._release = weakref.finalize(self, CudaGraphMode.release)
            self.staging = Staging(dev, self.deployment.plane_shape(self.batch))
            self.input_step = model_input(self.deployment, dev)
            self.compute = self._compute
            with torch.inference_mode(), self.staging.active():  # warmed up (and its graph recorded) on the engine's stream
                for _ in range(WARMUP_CALLS):
                    self.compute(self.staging.input)
            torch.cuda.synchronize(dev)

    def _compute(self, planes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 planes -> (uint8 mask, margin) or (keys,): input step in torch, the engine, the flag cast in torch."""
        out = self._engine(self.input_step(planes))
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if self.outputs == "keys":
            return out
        flag, margin = out
        return flag.to(torch.uint8), margin

    def close(self) -> None:
        """Release TensorRT's CUDA-graph runtime mode (also done when the backend is garbage collected)."""
        self._release()

    def _build(self, trt: ModuleType, dev: torch.device, path: Path) -> None:
        """Export, compile into one engine (or refuse, naming what TensorRT could not take), save for the cache."""
        example = torch.zeros(self.deployment.pixel_shape(self.batch), dtype=torch.float32, device=dev)

        def build_engine(full: bool, **options: object) -> torch.fx.GraphModule:
            exported = export_core(self.deployment, self.precision, self.outputs, dev, self.batch)
            with warnings.catch_warnings():  # 2.11 warns on every call that the flag will go (explicit typing stays)
                warnings.filterwarnings("ignore", message=".*use_explicit_typing.* is deprecated", category=DeprecationWarning)
                return trt.dynamo.compile(
                    exported,
                    arg_inputs=[example],
                    device=dev,
                    use_explicit_typing=True,
                    disable_tf32=True,
                    min_block_size=1,
                    require_full_compilation=full,
                    **options,
                )

        engine_types = (trt.runtime.TorchTensorRTModule, trt.runtime.PythonTorchTensorRTModule)
        try:
            compiled = build_engine(True)
        except AssertionError as exc:
            if "require_full_compilation" not in str(exc):
                raise
            # 2.11's refusal names no op: a dry run partitions without building and shows what stays in torch.
            dry = build_engine(False, dryrun=True)
            ops, engines = torch_fallbacks(dry, lambda name, _: name.startswith("_run_on_acc"))
            raise BackendUnavailable(refusal(ops, engines)) from exc
        ops, engines = torch_fallbacks(compiled, lambda _, module: isinstance(module, engine_types))
        if ops or engines != 1:  # e.g. no convertible op at all: 2.11 then returns the torch graph unchanged
            raise BackendUnavailable(refusal(ops, engines))
        trt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example])  # a path ending .pt2 (see load)
