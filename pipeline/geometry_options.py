"""How the geometry is derived from reference frames, as options and presets the command line offers.

Light on purpose (the geometry itself, with OpenCV and torch, is imported when one is built), so
``bonestream calibrate --help`` can show the presets' values without loading those libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from models.errors import BonestreamError
from models.resampling import DEFAULT_RESAMPLING

if TYPE_CHECKING:
    from models.preprocess import Geometry
    from pipeline.capture.frame import Frame


@dataclass(frozen=True)
class GeometryOptions:
    """How to derive the geometry from the reference frames (the result is stored in the reference)."""

    roi: str = "auto"
    short_side: int = 224
    input_size: tuple[int, int] | None = None
    stride: int = 8
    resampling: str = DEFAULT_RESAMPLING
    round_sides: bool = True  # False: the short side exactly, the long side truncated (the original's Resize(int))

    def build(self, frames: Sequence[Frame]) -> Geometry:
        from models.preprocess import Geometry, parse_roi

        sizes = {f.image.shape[:2] for f in frames}
        if len(sizes) != 1:
            detail = ", ".join(f"{f.name}: {f.image.shape[1]}x{f.image.shape[0]}" for f in frames[:6])
            raise BonestreamError(f"reference frames differ in size ({detail}); calibrate one geometry at a time")
        images = [f.image for f in frames]
        return Geometry.fit(
            sizes.pop(), parse_roi(self.roi, images), self.short_side, self.input_size, self.stride, self.resampling,
            self.round_sides,
        )


GEOMETRY_PRESETS = {  # calibration presets (calibration.calibrate.PRESETS) also fix how frames become model input
    "study": GeometryOptions(),
    "original": GeometryOptions(roi="full", stride=4, resampling="pil-lanczos", round_sides=False),
}
