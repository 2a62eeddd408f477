"""Pipeline outputs: each takes a finished Result on the publish thread, in frame order."""

from __future__ import annotations

from pathlib import Path

from pipeline.publish.files import write_png_atomic
from pipeline.run import Result


class MaskFiles:
    """``DIR/<frame name>.png`` masks (0/255, frame resolution), each written atomically."""

    name = "masks"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, result: Result) -> None:
        if result.prediction is not None:
            write_png_atomic(self.folder / f"{result.frame.name}.png", result.prediction.mask)

    def close(self) -> None:
        pass
