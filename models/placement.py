"""Device placement, in one place: modules are built directly on their device and work runs under its guard.

Nothing in bonestream moves a module with ``.to()`` after it was built: an engine or encoder is constructed on
its device from weights it copies (the loaded model stays where it was loaded, shared and untouched), so two
engines never share storage and no engine sees another's device or dtype change under it.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


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
    """Construct ``factory(device)`` with its tensors created on ``device``; frozen and in eval mode.

    The default-device context applies while building only: at run time it would add a dispatch to every op."""
    with ExitStack() as stack:
        dev = stack.enter_context(device_guard(device))
        stack.enter_context(dev)
        module = factory(dev)
    return module.eval().requires_grad_(False)
