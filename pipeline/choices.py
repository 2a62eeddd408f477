"""The names the command line offers (backends, precisions, refinements, truth kinds) and the default address.

Plain constants with no imports, so ``bonestream <command> --help`` builds its parser without loading torch or
OpenCV; the modules that implement each choice import it from here, so it is defined once.
"""

BACKENDS = ("torch", "torch-compile", "onnxruntime", "onnxruntime-trt", "tensorrt", "openvino")
BACKEND_CHOICES = ("auto", *BACKENDS)
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")
PRECISIONS = (*FLOAT_PRECISIONS, "int8")  # int8: linear layers quantised in the ONNX graph (ONNX Runtime on the CPU only)
PRECISION_CHOICES = ("auto", *PRECISIONS)  # auto: fp32 and each precision the device runs natively, timed, behind the parity gate


def on_cuda(device: str) -> bool:
    """Whether a ``--device`` name (cuda, cuda:1, ...) is a CUDA device, without importing torch."""
    return device.split(":")[0] == "cuda"


def default_precision(device: str) -> str:
    """The ViT's precision when none is chosen: bf16 on CUDA (fp32 at batch 1 misses the 1 ms budget; bf16 has fp32's
    range, so no fp16 overflow), fp32 elsewhere."""
    return "bf16" if on_cuda(device) else "fp32"


SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")  # attention kernels of the torch backends; auto: torch's
REFINEMENTS = ("grabcut",)
TRUTH_KINDS = ("auto", "surface", "region")
THIN_HALF_WIDTH = 5  # px: a mask with no pixel farther than this from its background is a curve, not a region
THIN_RULE = (
    f"auto: truth masks are surfaces when no foreground pixel of any non-empty mask lies more than {THIN_HALF_WIDTH} px "
    "(Euclidean) from the background, i.e. every mask is a curve at most ~10 px thick; regions when none is thin"
)
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
