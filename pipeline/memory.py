"""What a command will hold in memory, estimated from its settings before any model loads, against what its device
has free: a command that would not fit is refused in one line naming a setting that does, rather than killed by
the kernel (or by Ray at 95 % of node memory) without a word.

How the constants were derived: peak RSS (``os.wait4`` / ``getrusage`` of a fresh process, torch 2.x CPU build,
fp32, on the 2-core Intel Xeon that runs the tests), fitted by hand to the larger points and rounded up, so the
estimate errs on the side of refusing:

- ``adapt`` (one step of ``bonestream adapt``, random init; student tokens = batch x (2 global + local crops) x
  (patches + CLS)): 78 tokens, out-dim 64: 1.50 GB; 1584 tokens: 1.72 GB; 2056: 1.90 GB; 4112: 2.54 GB, i.e. about
  310 KB per student token (the activations backward keeps: 12 blocks x ~26 floats of 384 per token); out-dim 64 ->
  65536 at 78 tokens: +0.26 GB, 4 KB per prototype (student and teacher heads, gradient, AdamW's two moments).
  Checked at 2864 tokens with out-dim 16384: estimate 2.37 GB, measured 2.08 GB. The defaults (batch 32,
  2 x 224 + 6 x 96, 65536 prototypes: 78,080 tokens) come to about 24.8 GB, beside the 23.4 GB at which the kernel
  killed such a run on a 24 GB machine.
- inference (the ViT forward without gradients, as ``run``, ``bench``, ``multistream`` and ``archive`` workers run
  it): a forward at 224x224, stride 8, batch 1 -> 4 -> 8 (784 -> 3136 -> 6272 tokens) raised peak RSS by 37 and
  64 MB more (19-21 KB per token); stride 4, batch 2: 29 KB per token; so 32 KB per token of the largest call. A
  whole ``run`` of the phantom at 32x40 peaked at 602 MB (``INFER_PROCESS_BYTES``: torch, one engine, the outputs);
  each further engine (static batches 1, 2, 4, ...) copies the ViT's 22 M weights.

On CUDA the same per-token costs are used against ``torch.cuda.mem_get_info`` (autocast halves most activations, so
there the estimate is generous), without the host process's base.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from models.errors import BonestreamError
from models.vit import PATCH
from pipeline.choices import on_cuda

MB = 2**20
GB = 2**30
HEADROOM = 0.9  # of the memory available now: allocator slack and whatever else starts meanwhile keep the rest

ADAPT_PROCESS_BYTES = 1500 * MB  # python, torch, student and teacher, optimiser, recordings: adapt at its smallest
ADAPT_TOKEN_BYTES = 310 * 1024  # per student token, kept for backward
ADAPT_PROTOTYPE_BYTES = 4 * 1024  # per --out-dim prototype
INFER_PROCESS_BYTES = 600 * MB  # python, torch, one engine, the outputs
INFER_TOKEN_BYTES = 32 * 1024  # per token of one forward without gradients (transient: one block at a time)
ENGINE_BYTES = 90 * MB  # each further engine's copy of the ViT-S/8 weights (22 M, fp32)


def tokens(side_or_size: int | tuple[int, int], stride: int = PATCH) -> int:
    """Tokens of one crop or frame: patches at ``stride`` plus CLS."""
    h, w = (side_or_size, side_or_size) if isinstance(side_or_size, int) else side_or_size
    return ((h - PATCH) // stride + 1) * ((w - PATCH) // stride + 1) + 1


@dataclass(frozen=True)
class AdaptSize:
    """The settings of ``adapt`` that decide its memory."""

    batch: int
    global_size: int
    local_size: int
    local_crops: int
    out_dim: int

    def student_tokens(self) -> int:
        return self.batch * (2 * tokens(self.global_size) + self.local_crops * tokens(self.local_size))

    def bytes(self, cuda: bool) -> int:
        """On CUDA the forward runs under bf16/fp16 autocast, which keeps the saved activations in 16 bits: half the
        CPU's measured cost per token (an estimate: not yet measured on a GPU)."""
        per_token = ADAPT_TOKEN_BYTES // 2 if cuda else ADAPT_TOKEN_BYTES
        return (0 if cuda else ADAPT_PROCESS_BYTES) + self.student_tokens() * per_token + self.out_dim * ADAPT_PROTOTYPE_BYTES


def inference_bytes(batch: int, input_size: tuple[int, int], stride: int, cuda: bool = False) -> int:
    """One process running the ViT with engines at the static batches up to ``batch`` (1, 2, 4, ..., ``batch``): each
    holds its weights; on CUDA each also keeps its own activation buffers (CUDA graphs), on the CPU only the running
    call's are live."""
    from pipeline.segment.batches import static_sizes

    sizes = static_sizes(batch)
    call = tokens(input_size, stride) * INFER_TOKEN_BYTES
    if cuda:
        return len(sizes) * ENGINE_BYTES + sum(sizes) * call
    return INFER_PROCESS_BYTES + (len(sizes) - 1) * ENGINE_BYTES + batch * call


def available(device: str) -> int:
    """Bytes free for this command now: the host's available memory, or the CUDA device's free memory."""
    if on_cuda(device):
        import torch

        from models.placement import usable

        return torch.cuda.mem_get_info(usable(device))[0]
    import psutil

    return psutil.virtual_memory().available


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _where(device: str) -> str:
    return f"free on {device}" if on_cuda(device) else "available on this machine"


def check_adapt(size: AdaptSize, device: str) -> None:
    """Refuse an ``adapt`` that would not fit, naming the largest --batch-size that does."""
    cuda = on_cuda(device)
    need, free = size.bytes(cuda), available(device) * HEADROOM
    if need <= free:
        return
    fits = next((b for b in range(size.batch - 1, 0, -1) if replace(size, batch=b).bytes(cuda) <= free), None)
    crops = f"crops 2x{size.global_size} + {size.local_crops}x{size.local_size}"
    remedy = f"--batch-size {fits} fits" if fits else "even --batch-size 1 does not: use smaller --global-size/--local-size, fewer --local-crops or --out-dim"
    raise BonestreamError(f"batch {size.batch}, {crops}, out-dim {size.out_dim} needs about {_gb(need)} on {device}, "
                          f"{_gb(free / HEADROOM)} {_where(device)}: {remedy}")


def check_inference(device: str, batch: int, input_size: tuple[int, int], stride: int, option: str) -> None:
    """Refuse a run whose engines (up to ``batch`` frames per call at ``input_size``) would not fit, naming the
    largest ``option`` value that does."""
    cuda = on_cuda(device)
    need, free = inference_bytes(batch, input_size, stride, cuda), available(device) * HEADROOM
    if need <= free:
        return
    halvings = (batch >> i for i in range(1, batch.bit_length()))
    fits = next((b for b in halvings if inference_bytes(b, input_size, stride, cuda) <= free), None)
    h, w = input_size
    remedy = f"{option} {fits} fits" if fits else "a smaller input size does"
    raise BonestreamError(f"{option} {batch} at input {h}x{w} needs about {_gb(need)} on {device}, {_gb(free / HEADROOM)} "
                          f"{_where(device)}: {remedy}")


def check_workers(workers: int, batch: int, input_size: tuple[int, int], stride: int) -> None:
    """Each ``archive`` worker is a process with its own model: refuse more than the host holds (Ray kills workers at
    95 % of node memory), naming the --workers that fit."""
    per = inference_bytes(batch, input_size, stride)
    free = available("cpu") * HEADROOM
    if workers * per <= free:
        return
    fits = int(free // per)
    remedy = f"--workers {fits} fits" if fits else "not even one fits: free memory or use a smaller --batch-size"
    raise BonestreamError(f"--workers {workers}: each loads its own model (about {_gb(per)}), {_gb(workers * per)} in all, "
                          f"{_gb(free / HEADROOM)} available on this machine: {remedy}")


def check_queues(queue_size: int, streams: int, frame_size: tuple[int, int]) -> None:
    """Refuse a ``--queue-size`` whose hand-offs could hold more frames than the host has room for: a replay fills
    each stream's two hand-offs when inference is the slower stage (frames as read, up to RGB, and their results)."""
    h, w = frame_size
    per_frame = 2 * h * w * 3  # the frame, and its result's mask and overlay
    need, free = streams * 2 * queue_size * per_frame, available("cpu") * HEADROOM
    if need <= free:
        return
    fits = int(free // (streams * 2 * per_frame))
    remedy = f"--queue-size {fits} fits" if fits else "fewer streams do"
    raise BonestreamError(f"--queue-size {queue_size}: {streams} stream(s) x 2 hand-offs of {h}x{w} frames may hold about {_gb(need)}, "
                          f"{_gb(free / HEADROOM)} available on this machine: {remedy}")
