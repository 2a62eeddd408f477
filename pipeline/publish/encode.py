"""A frame's outputs made once for every sender: the overlay's JPEG where the overlay is (nvJPEG on CUDA, OpenCV
on the host) and the arrays outputs need on the host.

On CUDA only the compressed bytes (~100 kB) cross back to the host instead of the 2.3 MB RGB frame. torchvision
(the ``gpu`` extra) is optional: without it, or when its encoder fails, a CUDA overlay is copied to the host and
encoded there, and the log says so once.

torchvision's CUDA encoder is one object per process that encodes on a stream of its own, which waits for no
caller's stream: an image made on another stream (another probe's, the inference thread's) could be read before it
is written; and it copies the compressed bytes out on the legacy stream 0, which the caller's stream does not wait
for. So every device encode here first waits on the host for the image's producer
(its ``ready`` event, or the whole device when there is none), then for stream 0 before reading the bytes, under one
lock (the encoder is shared anyway); several ready images go in one batched call (``encode_jpegs``).
"""

from __future__ import annotations

import logging
import threading
from typing import Sequence

import cv2
import numpy as np
import torch

from pipeline.segment.segmenter import Prediction

log = logging.getLogger(__name__)

DEFAULT_JPEG_QUALITY = 90
_nvjpeg_failed: str | None = None  # why the device encoder is not used, once it failed (logged once)


class JpegError(ValueError):
    """The encoder refused an image."""


_nvjpeg_lock = threading.Lock()


def _wait_for(images: Sequence[torch.Tensor], ready: torch.cuda.Event | None) -> None:
    """The images' producing work finished (the encoder's stream does not wait for the producer's)."""
    if ready is not None:
        ready.synchronize()
    else:
        torch.cuda.synchronize(images[0].device)


def _device_jpegs(images: Sequence[torch.Tensor], quality: int, ready: torch.cuda.Event | None) -> list[bytes] | None:
    """nvJPEG through torchvision (one batched call), or None (and the host encoder from then on) when it is
    missing or fails."""
    global _nvjpeg_failed
    if _nvjpeg_failed is None:
        _wait_for(images, ready)  # outside the try: a fault of the producer's work is its own error, not the encoder's
        try:
            from torchvision.io import encode_jpeg as tv_encode_jpeg

            chw = [rgb.permute(2, 0, 1).contiguous() for rgb in images]  # copies on this thread's stream ...
            torch.cuda.current_stream(images[0].device).synchronize()  # ... done before the encoder's own stream reads them
            with _nvjpeg_lock:
                encoded = tv_encode_jpeg(chw, quality=quality)
                torch.cuda.default_stream(images[0].device).synchronize()  # torchvision copies the bytes out on stream 0
                return [e.cpu().numpy().tobytes() for e in encoded]
        except Exception as exc:  # torchvision absent, or built without CUDA JPEG support
            _nvjpeg_failed = f"{type(exc).__name__}: {exc}"
            log.warning("nvJPEG unavailable (%s): overlays are encoded on the host from now on", _nvjpeg_failed)
    return None


def _host_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise JpegError(f"OpenCV could not encode a {rgb.shape} {rgb.dtype} image as JPEG")
    return data.tobytes()


def encode_jpegs(images: Sequence[np.ndarray | torch.Tensor], quality: int = DEFAULT_JPEG_QUALITY, ready: torch.cuda.Event | None = None) -> list[bytes]:
    """H x W x 3 RGB uint8 images as baseline JPEG files; CUDA images of one device in one nvJPEG call. ``ready``:
    an event recorded on the stream that produced the CUDA images (without it the device is synchronised)."""
    if images and all(isinstance(rgb, torch.Tensor) and rgb.is_cuda for rgb in images) and len({rgb.device for rgb in images}) == 1:
        if (data := _device_jpegs(images, quality, ready)) is not None:
            return data
    return [_host_jpeg(rgb.cpu().numpy() if isinstance(rgb, torch.Tensor) else rgb, quality) for rgb in images]


def encode_jpeg(rgb: np.ndarray | torch.Tensor, quality: int = DEFAULT_JPEG_QUALITY, ready: torch.cuda.Event | None = None) -> bytes:
    """An H x W x 3 RGB uint8 image as a baseline JPEG file (``encode_jpegs`` of one)."""
    return encode_jpegs([rgb], quality, ready)[0]


def warm_encoder(device: torch.device, size: tuple[int, int]) -> None:
    """Create the device encoder (and its buffers for this frame size) before the first frame, so no live frame pays
    for it; nothing to do off CUDA."""
    if device.type == "cuda":
        encode_jpeg(torch.zeros((*size, 3), dtype=torch.uint8, device=device))


def encode_predictions(predictions: Sequence[Prediction], *, jpeg: bool, raw_overlay: bool) -> list[bytes | None]:
    """Make ``predictions`` ready for outputs, in place: their arrays on the host (only the overlays' JPEGs cross when
    that is all outputs need), their overlays encoded once when ``jpeg``, in one call for predictions made together
    (on CUDA one batched nvJPEG call). Returns the JPEGs (None where there is no overlay or no ``jpeg``)."""
    ready = predictions[-1].ready if predictions else None  # the last one's event: later on the same stream
    if ready is not None:  # made on the inference thread's stream, read on this one's
        ready.synchronize()
    overlays = [p.overlay for p in predictions if p.overlay is not None] if jpeg else []
    encoded = iter(encode_jpegs(overlays, ready=ready) if overlays else [])
    out = []
    for prediction in predictions:
        overlay = prediction.overlay
        out.append(next(encoded) if jpeg and overlay is not None else None)
        if isinstance(prediction.mask, torch.Tensor):
            prediction.patch_mask, prediction.margin, prediction.mask = (t.cpu().numpy() for t in (prediction.patch_mask, prediction.margin, prediction.mask))
        if isinstance(overlay, torch.Tensor) and raw_overlay:
            prediction.overlay = overlay.cpu().numpy()
        elif not raw_overlay:
            prediction.overlay = None
    return out


def encode_prediction(prediction: Prediction, *, jpeg: bool, raw_overlay: bool) -> bytes | None:
    """``encode_predictions`` of one: what the pipeline's encode stage does per frame."""
    return encode_predictions([prediction], jpeg=jpeg, raw_overlay=raw_overlay)[0]
