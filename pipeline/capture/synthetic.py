"""The bundled phantom as a source: a B-mode-like stream with exact ground truth, no patient data needed."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.capture.frame import Frame, Source, now_ns
from pipeline.capture.phantom import Phantom, PhantomConfig


class PhantomSource(Source):
    def __init__(self, config: PhantomConfig = PhantomConfig()) -> None:
        self.phantom = Phantom(config)
        self.config = config
        self.fps = config.fps
        self.name = f"phantom:{config.n_frames}"
        self.stem = "phantom"

    @property
    def count(self) -> int:
        return self.config.n_frames

    def truth(self, index: int) -> np.ndarray:
        return self.phantom.frame(index)[1]

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.config.n_frames):
            yield Frame(i, self.phantom.frame(i)[0], f"phantom_{i:05d}", i / self.config.fps, now_ns())
