"""Image files, folders and globs as a replay source, in name order, at a given frame rate."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from pipeline.capture.frame import Frame, Source, SourceError, now_ns

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
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise SourceError(f"{p} and {stems[p.stem]} share the name {p.stem!r}; masks are named by it")
        stems[p.stem] = p
    return paths


def read_image(path: Path) -> np.ndarray:
    """uint8 gray or RGB pixels of an image file."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SourceError(f"{path}: not a readable image (empty, truncated or not an image format)")
    if image.dtype != np.uint8:
        raise SourceError(f"{path}: {image.dtype} pixels; bonestream reads 8-bit B-mode images")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


class ImageSource(Source):
    def __init__(self, specs: Sequence[str | Path], fps: float = 20.0) -> None:
        self.paths = expand_images(specs)
        self.fps = fps
        self.name = str(specs[0]) if len(specs) == 1 else f"{len(self.paths)} images"
        self.stem = Path(specs[0]).stem if len(specs) == 1 else "images"

    @property
    def count(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            yield Frame(i, read_image(path), path.stem, i / self.fps, now_ns())
