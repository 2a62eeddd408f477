"""File outputs that are either complete or absent: atomic PNG/JSON writes and a finalising video writer."""

from __future__ import annotations

import io
import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import av
import cv2
import numpy as np

_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it), then restored
os.umask(_UMASK)


def named(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file when it names none (a failed write() does not), for one clear line."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror, str(path))


def results_in(folder: Path, owned: Sequence[str]) -> list[Path]:
    """The files in ``folder`` matching the ``owned`` glob patterns: what a previous run of a job left there."""
    return [f for pattern in owned for f in sorted(folder.glob(pattern)) if f.is_file()] if folder.is_dir() else []


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and a rename, so no reader ever sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished output gets the permissions any file would
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise named(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_figure(fig: Any, path: str | Path, stamp: str | None = None, *, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG written atomically, with ``stamp`` (e.g. RANDOM WEIGHTS) in red across its top,
    so a figure made from random weights cannot be shown without saying so. Lay it out before; close it after."""
    if stamp:
        fig.text(0.01, 0.995, stamp, color="red", fontsize=9, fontweight="bold", va="top")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1, allow_nan=False) + "\n").encode())


def write_png_atomic(path: str | Path, image: np.ndarray) -> None:
    """PNG of a gray or RGB image (converted for OpenCV's BGR order)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, data.tobytes())


class VideoWriter:
    """H.264 MP4 (yuv420p) written to a temp name and renamed on close(), so a file at ``path`` is always a
    complete video; frames whose size is odd are padded by one black row/column (yuv420p needs even sides).

    ``fragmented`` (recordings): the MP4 is fragmented at every frame and the encoder keeps no frames back
    (zerolatency), so if the process is killed (kill -9, power) or the disk fills, the ``.partial`` file still plays
    every frame written so far. Fragmented files carry no frame count in their header."""

    def __init__(self, path: str | Path, fps: float, *, crf: int = 20, fragmented: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self.fragmented = fragmented
        options = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"} if fragmented else {}
        self._container = av.open(str(self._tmp), mode="w", format="mp4", options=options)
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast", **({"tune": "zerolatency"} if fragmented else {})}
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (h + h % 2, w + w % 2)
            self._stream.height, self._stream.width = self._size
        if (h + h % 2, w + w % 2) != self._size:
            raise ValueError(f"{self.path}: frame size {w}x{h} differs from the video's {self._size[1]}x{self._size[0]}")
        if (h, w) != self._size:
            rgb = np.pad(rgb, ((0, self._size[0] - h), (0, self._size[1] - w), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except OSError as exc:
            raise named(exc, self._tmp) from None
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and publish the file (an empty video is discarded). When that fails (a full disk) a
        fragmented video stays as ``.partial``, playable up to its last complete fragment; another is removed."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            if self.frames:
                for packet in self._stream.encode():
                    container.mux(packet)
            container.close()
            if self.frames:
                os.replace(self._tmp, self.path)
        except OSError as exc:
            if not self.fragmented:
                self._tmp.unlink(missing_ok=True)
            raise named(exc, self._tmp) from None
        finally:
            if not self.frames:
                self._tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Close without publishing: a job that failed half way leaves no complete-looking video behind."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            container.close()
        except (OSError, av.error.FFmpegError):
            pass  # the file is removed anyway
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
