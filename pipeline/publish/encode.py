"""A frame's outputs made once for every sender: the overlay's JPEG where the overlay is (nvJPEG on CUDA, OpenCV
on the host) and the arrays outputs need on the host.

On CUDA only the compressed bytes (~100 kB) cross back to the host instead of the 2.3 MB RGB frame. torchvision
(the ``gpu`` extra) is optional: without it, or when its encoder fails, a CUDA overlay is copied to the host and
encoded there, and the log says so once.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from pipeline.segment.segmenter import Prediction

log = logging.getLogger(__name__)

DEFAULT_JPEG_QUALITY = 90
_nvjpeg_failed: str | None = None  # why the device encoder is not used, once it failed (logged once)


class JpegError(ValueError):
    """The encoder refused an image."""


def _device_jpeg(rgb: torch.Tensor, quality: int) -> bytes | None:
    """nvJPEG through torchvision, or None (and the host encoder from then on) when it is missing or fails."""
    global _nvjpeg_failed
    if _nvjpeg_failed is None:
        try:
            from torchvision.io import encode_jpeg

            return encode_jpeg(rgb.permute(2, 0, 1).contiguous(), quality=quality).cpu().numpy().tobytes()
        except Exception as exc:  # torchvision absent, or built without CUDA JPEG support
            _nvjpeg_failed = f"{type(exc).__name__}: {exc}"
            log.warning("nvJPEG unavailable (%s): overlays are encoded on the host from now on", _nvjpeg_failed)
    return None


def encode_jpeg(rgb: np.ndarray | torch.Tensor, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """An H x W x 3 RGB uint8 image as a baseline JPEG file."""
    if isinstance(rgb, torch.Tensor):
        if rgb.is_cuda and (data := _device_jpeg(rgb, quality)) is not None:
            return data
        rgb = rgb.cpu().numpy()
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise JpegError(f"OpenCV could not encode a {rgb.shape} {rgb.dtype} image as JPEG")
    return data.tobytes()


def encode_prediction(prediction: Prediction, *, jpeg: bool, raw_overlay: bool) -> bytes | None:
    """Make ``prediction`` ready for outputs, in place: its arrays on the host (only the overlay's JPEG crosses when
    that is all outputs need), its overlay encoded once when ``jpeg``. Returns the JPEG, or None."""
    overlay = prediction.overlay
    encoded = encode_jpeg(overlay) if jpeg and overlay is not None else None
    if isinstance(prediction.mask, torch.Tensor):
        prediction.patch_mask, prediction.margin, prediction.mask = (t.cpu().numpy() for t in (prediction.patch_mask, prediction.margin, prediction.mask))
    if isinstance(overlay, torch.Tensor) and raw_overlay:
        prediction.overlay = overlay.cpu().numpy()
    elif not raw_overlay:
        prediction.overlay = None
    return encoded
