"""Image files, folders and globs as a replay source, in name order, at a given frame rate."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from pipeline.capture.frame import Frame, Source, SourceError, distinct_names, now_ns, to_uint8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def expand_images(specs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders' images sorted by name, globs expanded and sorted."""
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SourceError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif p.is_file():
            paths.append(p)
        elif any(ch in str(spec) for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(spec)) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SourceError(f"{spec}: pattern matches no images")
            paths += found
        else:
            raise SourceError(f"{spec}: no such file or folder")
    return paths


def read_image(path: Path, where: str | None = None) -> np.ndarray:
    """uint8 gray, RGB or RGBA pixels of an image file (palette PNGs come expanded by OpenCV); 16-bit images
    are scaled to 8-bit with one warning per ``where`` (default: the file)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SourceError(f"{path}: not a readable image (empty, truncated or not an image format)")
    if image.dtype == np.uint16:
        image = to_uint8(image, where or str(path))
    elif image.dtype != np.uint8:
        raise SourceError(f"{path}: {image.dtype} pixels; bonestream reads 8- or 16-bit B-mode images")
    return from_bgr(image)


def from_bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / BGRA channel order as the RGB / RGBA that frames carry; gray as is."""
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


class ImageSource(Source):
    def __init__(self, specs: Sequence[str | Path], fps: float = 20.0) -> None:
        self.paths = expand_images(specs)
        self.names = distinct_names(self.paths)  # frame and mask names: stems, with the folder where they repeat
        self.fps = fps
        self.name = str(specs[0]) if len(specs) == 1 else f"{len(self.paths)} images"
        self.stem = Path(specs[0]).stem if len(specs) == 1 else "images"

    @property
    def count(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames_from(0)

    def frames_from(self, start: int) -> Iterator[Frame]:
        """From image ``start`` on, the files before it never read."""
        first_size: tuple[int, int] | None = None
        for i in range(start, len(self.paths)):
            path = self.paths[i]
            image = read_image(path, self.name)
            size = (image.shape[1], image.shape[0])
            if first_size is None:
                first_size = size
            elif size != first_size:  # one source, one geometry: the model's grid and the overlays assume it
                raise SourceError(
                    f"{path}: {size[0]}x{size[1]} pixels, but {self.paths[start]} is {first_size[0]}x{first_size[1]}; "
                    "images of one source must share a size"
                )
            yield Frame(i, image, self.names[i], i / self.fps, now_ns())
