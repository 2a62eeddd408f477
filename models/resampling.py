"""The resize methods from a frame's imaging area to the model input, by name and by where they run.

Names only (``models.preprocess`` implements the host methods, ``models.encoder`` the device ones), so the
command line can offer them without loading OpenCV, Pillow or torch.
"""

from pipeline.choices import on_cuda

DEFAULT_RESAMPLING = "pil-lanczos"
HOST_METHODS = ("pil-lanczos", "lanczos", "area", "linear", "cubic")  # uint8 in and out, reproducible on any machine
DEVICE_RESAMPLING = {  # torch on the model's device, antialiased (F.interpolate(antialias=True)), float out
    "bilinear-aa": "bilinear",
    "bicubic-aa": "bicubic",
}
RESAMPLING = (*HOST_METHODS, *DEVICE_RESAMPLING)


def device_resampling(device: str) -> str:
    """The resampling used when none is chosen: on CUDA one on the device (a host Lanczos costs 1.3-4.5 ms per frame
    on the inference thread, and the overlay then reuses the plane already on the device), elsewhere the host default."""
    return "bilinear-aa" if on_cuda(device) else DEFAULT_RESAMPLING
