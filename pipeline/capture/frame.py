"""What every source yields, and the contract sources follow."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from models.errors import BonestreamError

log = logging.getLogger(__name__)


class SourceError(BonestreamError):
    """A source that cannot be opened or read; the message names the file or device and the frame."""


@dataclass(slots=True)
class Frame:
    """One B-mode frame: ``id`` counts from 0 per source, ``source_ts`` is the source's own clock in seconds
    (stream timestamp, file order / fps, or device time), ``capture_ns`` is time.monotonic_ns() on arrival.
    ``spacing_mm`` is (row, column) mm per pixel where the source states it (DICOM PixelSpacing, an OpenIGTLink
    IMAGE), so outputs that place the frame in space (OpenIGTLink) can say how large it is."""

    id: int
    image: np.ndarray
    name: str
    source_ts: float | None
    capture_ns: int
    spacing_mm: tuple[float, float] | None = None


def now_ns() -> int:
    return time.monotonic_ns()


_warned_deep: set[str] = set()


def to_uint8(
    image: np.ndarray, where: str, *, bits: int | None = None, window: tuple[float, float] | None = None
) -> np.ndarray:
    """8-bit pixels of a deeper integer image, since B-mode is 8-bit in practice and the model sees 8-bit.

    ``window`` (center, width; DICOM linear VOI) maps its range to 0..255 when given, else the full range of
    ``bits`` stored bits (default: the dtype's). Warns once per ``where``: scaling changes what the model sees.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind not in "ui":
        raise SourceError(f"{where}: {image.dtype} pixels; bonestream reads integer images")
    bits = bits or image.dtype.itemsize * 8
    if window is not None:
        center, width = window
        low, span = center - 0.5 - (width - 1) / 2, max(width - 1, 1.0)
        how = f"window center {center:g} / width {width:g}"
    else:
        low = -(2 ** (bits - 1)) if image.dtype.kind == "i" else 0
        span, how = 2**bits - 1, f"its {bits}-bit stored range"
    if where not in _warned_deep:
        _warned_deep.add(where)
        log.warning("%s: %s-bit pixels scaled to 8-bit by %s (B-mode is 8-bit)", where, bits, how)
    scaled = (image.astype(np.float32) - np.float32(low)) * np.float32(255.0 / span)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def distinct_names(paths: Sequence[Path]) -> list[str]:
    """A name per path for the outputs made from it: the stem, with parent folders in front where stems repeat
    (``IM_0001`` in several DICOM series folders), then a number where even the folders agree. Never a path:
    no separator, no root, so a name cannot place an output outside its folder."""
    folders = [p.parent.parts[1:] if p.parent.anchor else p.parent.parts for p in paths]
    names = [p.stem for p in paths]
    for stem in {n for n in names if names.count(n) > 1}:
        group = [i for i, n in enumerate(names) if n == stem]
        deepest = max(len(folders[i]) for i in group)
        # the fewest trailing folders that tell the group apart best (none, when they share one folder)
        distinct = [len({folders[i][len(folders[i]) - d :] for i in group}) for d in range(deepest + 1)]
        depth = distinct.index(max(distinct))
        for i in group:
            names[i] = "_".join([*folders[i][len(folders[i]) - depth :], stem])
    taken = {n for n in names if names.count(n) == 1}  # unique names keep theirs; repeats are numbered around them
    for i, name in enumerate(names):
        if names.count(name) == 1 and name in taken:
            continue
        candidate, k = name, 1
        while candidate in taken:  # the same file twice, or a.png beside a.mp4
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate)
        names[i] = candidate
    return names


class Source:
    """Iterable of Frames. ``count`` is the number of frames when known in advance; ``live`` sources drop
    frames when the pipeline is slower than the device, replay sources never do."""

    name: str = "source"
    stem: str = "source"  # names output files made from this source
    live: bool = False
    fps: float | None = None

    @property
    def count(self) -> int | None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def frames_from(self, start: int) -> Iterator[Frame]:
        """Frames with ids ``start`` onwards (a frame range). Here by reading and skipping those before; sources
        that can seek cheaply (image lists) override it."""
        return itertools.islice(iter(self), start, None)

    def close(self) -> None:
        """Release files or devices; iteration may not resume afterwards."""

    def interrupt(self) -> None:
        """Wake a wait for the next frame (pacing) so iteration ends; safe from another thread, unlike close()."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WrappedSource(Source):
    """A source that changes which frames another yields, or their stamps: it takes the wrapped source's names,
    rate and kind, reads its counters through (a device's dropped, reconnects, gaps), and passes interrupt and
    close on."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name, self.stem, self.fps, self.live = source.name, source.stem, source.fps, source.live

    @property
    def count(self) -> int | None:
        return self.source.count

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.source, name)

    def interrupt(self) -> None:
        self.source.interrupt()

    def close(self) -> None:
        self.source.close()
