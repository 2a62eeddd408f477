"""Label frames with a calibrated reference: a small predictor API over any backend, numpy or device tensors.

    segmenter = BoneSegmenter.create("ref.json", weights="random:0")
    prediction = segmenter.predict([frame])[0]        # prediction.mask: 0/255 at frame resolution
    on_device = segmenter.predict(gpu_frames, overlay=True, tensors=True)   # B x H x W uint8 on the device

One frame's path: the host makes its uint8 plane (``Geometry.plane``), one copy crosses to the device, the engine
returns patch flags and margins, the renderer makes the full-frame mask and overlay there, and only what the caller
asked for comes back. The streaming pipeline calls this same ``predict``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from calibration.reference import Reference
from models.errors import FrameError
from models.loader import load_model
from models.placement import device_guard
from models.preprocess import to_gray
from models.vit import DinoViT
from models.weights import WeightsIdentity
from pipeline.choices import REFINEMENTS
from pipeline.infer.backend import Backend
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.select import BackendSpec, Gate, Selection, select_backend
from pipeline.infer.staging import HostMirror, StageClock, StaticInput, ready
from pipeline.segment.refine import GrabCutRefiner
from pipeline.segment.render import RANDOM_STAMP, build_renderer

Array = np.ndarray | torch.Tensor
STAGES = ("host_to_device", "model_labelling", "mask_overlay", "device_to_host")


@dataclass
class Prediction:
    """One frame's result, as numpy arrays or (``tensors=True``) device tensors. ``margin`` > 0 marks bone; its
    size is the patch's confidence."""

    patch_mask: Array  # h x w bool
    margin: Array  # h x w float32
    mask: Array  # frame-size uint8, 0 or 255, zeros outside the ROI
    overlay: Array | None = None  # frame-size x 3 RGB uint8, when asked for
    timings_ms: dict[str, float] = field(default_factory=dict)
    ready: torch.cuda.Event | None = None  # device tensors on CUDA: recorded after the last write to them, on their stream

    @property
    def foreground_fraction(self) -> float:
        return float(self.patch_mask.sum()) / max(1, int(np.prod(tuple(self.patch_mask.shape))))

    @property
    def confidence(self) -> float:
        """Mean margin of the patches labelled bone (0 when none): how far bone patches sit from the boundary."""
        count = int(self.patch_mask.sum())
        return float(self.margin[self.patch_mask].sum()) / count if count else 0.0


class BoneSegmenter:
    """A reference, a backend built for it, and the device-side renderer; ``predict`` is the whole frame path."""

    selection: Selection | None = None  # how create() chose the backend (auto's timings and fallbacks)

    def __init__(self, reference: Reference, backend: Backend, weights: WeightsIdentity, refine: str | None = None) -> None:
        reference.check_weights(weights.label)
        if getattr(backend, "outputs", "fused") != "fused":
            raise ValueError(f"a segmenter needs a fused engine (mask and margin), not a {backend.outputs!r} one")
        self.reference = reference
        self.geometry = reference.geometry
        self.backend = backend
        self.weights = weights
        if refine not in (None, *REFINEMENTS):
            raise ValueError(f"refinement {refine!r} is not one of {', '.join(REFINEMENTS)}")
        self.refine = refine
        self.refiner = GrabCutRefiner(self.geometry) if refine else None
        self.stages = STAGES if refine is None else (*STAGES[:2], "refine", *STAGES[2:])
        staging = backend.staging
        self.device = staging.device
        with device_guard(self.device):
            cells = "patch" if refine is None else "pixel"
            self.renderer = build_renderer(self.geometry, RANDOM_STAMP if weights.is_random else None, self.device, cells)
            batch = staging.shape[0]
            grid = self.geometry.grid if refine is None else self.geometry.input_size
            self.patches = torch.zeros((batch, *grid), dtype=torch.uint8, device=self.device)  # what the renderer maps
            # the gray frames the overlay is drawn on: the engine's own input when it takes whole frames
            self.frame_input = None if self.geometry.on_device else StaticInput(self.device, (batch, *self.geometry.frame_size))
            self.frames = staging.input if self.frame_input is None else self.frame_input.tensor
            self.render_mask = ready(self.renderer, self.patches)
            self.render_both = ready(self.renderer, self.patches, self.frames)
        self.clock = StageClock(self.device, self.stages)
        self.mirror = HostMirror(self.device)

    @classmethod
    def create(
        cls,
        reference: Reference | str,
        weights: str | None = None,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        batch: int = 1,
        refine: str | None = None,
        cache: EngineCache | None = None,
        allow_download: bool = True,
        progress: bool = True,
        sdpa: str = "auto",
    ) -> "BoneSegmenter":
        """``backend``: torch, torch-compile, onnxruntime, onnxruntime-trt, tensorrt, or auto (fastest here, with
        every fallback reported in ``selection``); ``batch`` is the engines' static batch size; ``refine="grabcut"``
        refines each mask on the host (pipeline.segment.refine); ``sdpa`` forces an attention kernel (torch backends). ``weights`` None: the weights the reference records
        (Reference.weights_spec); others are refused unless they are the same. Everything is built, warmed up and (on CUDA)
        captured here, before any frame."""
        ref = reference if isinstance(reference, Reference) else Reference.load(reference)
        spec = ref.weights_spec() if weights is None else weights  # the reference's own weights unless others are named
        model, identity = load_model(spec, allow_download=allow_download, progress=progress)
        return cls.from_model(ref, model, identity, BackendSpec(backend, device, precision, batch, sdpa=sdpa), refine=refine, cache=cache)

    @classmethod
    def from_model(
        cls, reference: Reference, model: DinoViT, identity: WeightsIdentity, spec: BackendSpec, *, refine: str | None = None,
        cache: EngineCache | None = None, gate: Gate | None = None,
    ) -> "BoneSegmenter":
        """A segmenter on a model already loaded (``model`` is only read: the engine copies what it needs), so one
        process can serve several references or frame sizes with one set of weights."""
        deployment = Deployment.from_reference(model, identity.label, reference)
        selection = select_backend(spec, deployment, cache, gate=gate)
        segmenter = cls(reference, selection.backend, identity, refine)
        segmenter.selection = selection
        return segmenter

    @property
    def batch(self) -> int:
        return self.backend.staging.shape[0]

    def predict(self, frames: Sequence[np.ndarray] | torch.Tensor, names: Sequence[str] | None = None, *, overlay: bool = False, tensors: bool = False) -> list[Prediction]:
        """Label ``frames``: uint8 images as captured (gray or RGB, frame size of the reference), or a B x H x W uint8
        gray tensor already on the segmenter's device. ``overlay`` also draws the overlay; ``tensors`` returns
        device tensors (copies, safe to keep) instead of numpy arrays. ``names`` label frames in errors."""
        if len(frames) == 0:
            return []
        start = time.perf_counter()
        planes, gray = self._host_inputs(frames, names, overlay)
        prepare_ms = (time.perf_counter() - start) * 1e3 / max(1, len(planes))
        out: list[Prediction] = []
        with torch.inference_mode(), self.backend.staging.active():  # the engine's own stream, as its calls use
            for first in range(0, len(planes), self.batch):
                chunk = slice(first, first + self.batch)
                out += self._run(planes[chunk], None if gray is None else gray[chunk], overlay, tensors)
        for p in out:
            p.timings_ms["prepare"] = prepare_ms
        return out

    def _host_inputs(self, frames: Sequence[np.ndarray] | torch.Tensor, names: Sequence[str] | None, overlay: bool) -> tuple[Array, Array | None]:
        """The engine's planes, and the gray frames for the overlay when they are not the planes themselves."""
        g = self.geometry
        if isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8 or frames.ndim != 3 or tuple(frames.shape[1:]) != tuple(g.frame_size) or frames.device != self.device:
                raise FrameError(
                    f"frames tensor {tuple(frames.shape)} {frames.dtype} on {frames.device}: expected B x {g.frame_size[0]} x "
                    f"{g.frame_size[1]} uint8 gray on {self.device}"
                )
            if not g.on_device:
                raise FrameError(
                    f"this reference resamples on the host ({g.resampling}): pass numpy frames, or calibrate with a device "
                    "resampling (--resampling bilinear-aa) to feed device tensors"
                )
            return frames, None
        names = list(names) if names is not None else [f"frame {i}" for i in range(len(frames))]
        if overlay and not g.on_device:  # the overlay is drawn on the whole gray frame: make it once, plane from it
            gray = [to_gray(f, n) for f, n in zip(frames, names)]
            return g.planes(gray, names), np.stack(gray)
        return g.planes(frames, names), None

    def _run(self, planes: Array, gray: Array | None, overlay: bool, tensors: bool) -> list[Prediction]:
        staging, clock = self.backend.staging, self.clock
        clock.mark(0)
        n = staging.upload(planes)
        if gray is not None:
            self.frame_input.upload(gray)
        clock.mark(1)
        flags, margin = self.backend.compute(staging.input)[:2]
        step = 2
        if self.refiner is None:
            self.patches.copy_(flags)
        else:
            clock.mark(step)
            step += 1
            host_planes = planes.cpu().numpy() if isinstance(planes, torch.Tensor) else planes
            refined = self.refiner(host_planes[:n], flags[:n].cpu().numpy())
            self.patches[:n].copy_(torch.from_numpy(refined))
        clock.mark(step)
        rendered = self.render_both(self.patches, self.frames) if overlay else self.render_mask(self.patches)
        clock.mark(step + 1)
        ready = None
        if tensors:
            with torch.inference_mode(False):  # ordinary tensors: the caller may write to them or track gradients
                results = [flags[:n].bool(), *(t[:n].clone() for t in (margin, *rendered))]
            if self.device.type == "cuda":  # every write above is before this event: a reader on another stream waits on it
                ready = torch.cuda.Event()
                ready.record()
        else:
            results = [self.mirror.start(i, t) for i, t in enumerate((flags, margin, *rendered))]
        clock.mark(step + 2)
        timings = {k: v / n for k, v in clock.elapsed_ms().items()}
        if not tensors:
            results = [HostMirror.numpy(t, n) for t in results]
            results[0] = results[0].astype(bool)
        flags_, margins, masks, *overlays = results
        return [Prediction(flags_[i], margins[i], masks[i], overlays[0][i] if overlays else None, dict(timings), ready) for i in range(n)]
