"""The resize methods from a frame's imaging area to the model input, by name and by where they run.

Names only (``models.preprocess`` implements the host methods, ``models.encoder`` the device ones), so the
command line can offer them without loading OpenCV, Pillow or torch.
"""

DEFAULT_RESAMPLING = "pil-lanczos"
HOST_METHODS = ("pil-lanczos", "lanczos", "area", "linear", "cubic")  # uint8 in and out, reproducible on any machine
DEVICE_RESAMPLING = {  # torch on the model's device, antialiased (F.interpolate(antialias=True)), float out
    "bilinear-aa": "bilinear",
    "bicubic-aa": "bicubic",
}
RESAMPLING = (*HOST_METHODS, *DEVICE_RESAMPLING)
