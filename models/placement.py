"""Device placement, in one place: modules are built directly on their device and work runs under its guard.

Nothing in bonestream moves a module with ``.to()`` after it was built: an engine or encoder is constructed on
its device from weights it copies (the loaded model stays where it was loaded, shared and untouched), so two
engines never share storage and no engine sees another's device or dtype change under it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

from pipeline.choices import SDPA_BACKENDS

M = TypeVar("M", bound=nn.Module)

# Which scaled-dot-product attention kernel is fastest on a GPU is measured, not assumed (on Hopper cuDNN's can beat
# FlashAttention): the choice is a setting (SDPA_BACKENDS) the GPU benchmark sweeps.


def sdpa_context(name: str) -> AbstractContextManager[object]:
    """The attention kernel ``name`` forced for the work inside (``auto``: nothing forced). A kernel that cannot run
    the shapes or device is an error at build time, not a silent fallback."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"sdpa {name!r} is not one of {', '.join(SDPA_BACKENDS)}")
    if name == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel(kinds[name])


_fp32_matmul_fixed = False  # inside fp32_matmul(): a precision chosen for the builds there, left as it is


@contextmanager
def fp32_matmul(precision: str) -> Iterator[None]:
    """torch's fp32 matrix-product precision fixed for the work inside ("highest": true fp32, "high": TF32) instead of
    bonestream's CUDA default, then restored: for A/B measurements (a CUDA graph keeps the kernels of its capture)."""
    global _fp32_matmul_fixed
    before, fixed = torch.get_float32_matmul_precision(), _fp32_matmul_fixed
    torch.set_float32_matmul_precision(precision)
    _fp32_matmul_fixed = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
        _fp32_matmul_fixed = fixed


def cuda_float32_math() -> None:
    """TF32 for fp32 matrix products on CUDA (fp32 engines, and the labelling's one distance product and the parity
    gate's fp32 reference with them): the one place bonestream sets it, once something is built on CUDA (torch 2.13
    then applies it to oneDNN's CPU matmuls in that process too). Set through
    ``set_float32_matmul_precision``, which keeps torch's legacy and newer (``fp32_precision``) flags in agreement:
    setting only the newer one makes every read of the legacy one raise on torch >= 2.9 (inductor reads it)."""
    if not _fp32_matmul_fixed:
        torch.set_float32_matmul_precision("high")


def resolve(device: str | torch.device) -> torch.device:
    """``cuda`` means the current CUDA device, by index, so guards and events name one device."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def usable(device: str) -> torch.device:
    """``device`` checked before any work starts: a name torch knows, and a CUDA device that is here."""
    from models.errors import BonestreamError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BonestreamError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BonestreamError(f"--device {device}: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise BonestreamError(f"--device {device}: {torch.cuda.device_count()} CUDA devices here")
    return dev


@contextmanager
def device_guard(device: str | torch.device) -> Iterator[torch.device]:
    """Run on ``device``: on CUDA it becomes the current device, so kernels, streams and events of the work inside
    go to it (``cuda:1`` work timed with ``cuda:0`` events would be read before it finished)."""
    dev = resolve(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            yield dev
    else:
        yield dev


def build_on(device: str | torch.device, factory: Callable[[torch.device], M]) -> M:
    """Construct ``factory(device)`` with its tensors created on ``device``; frozen and in eval mode. On CUDA, fp32
    math is set to TF32 (``cuda_float32_math``) before anything is built there.

    The default-device context applies while building only: at run time it would add a dispatch to every op."""
    with ExitStack() as stack:
        dev = stack.enter_context(device_guard(device))
        if dev.type == "cuda":
            cuda_float32_math()
        stack.enter_context(dev)
        module = factory(dev)
    return module.eval().requires_grad_(False)
