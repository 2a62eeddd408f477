"""What every source yields, and the contract sources follow."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from models.errors import BonestreamError


class SourceError(BonestreamError):
    """A source that cannot be opened or read; the message names the file or device and the frame."""


@dataclass(slots=True)
class Frame:
    """One B-mode frame: ``id`` counts from 0 per source, ``source_ts`` is the source's own clock in seconds
    (stream timestamp, file order / fps, or device time), ``capture_ns`` is time.monotonic_ns() on arrival."""

    id: int
    image: np.ndarray
    name: str
    source_ts: float | None
    capture_ns: int


def now_ns() -> int:
    return time.monotonic_ns()


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

    def close(self) -> None:
        """Release files or devices; iteration may not resume afterwards."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
