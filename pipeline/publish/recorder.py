"""Recording of received frames: overlay video, one mask PNG per frame, and every header.

Layout of the output folder::

    <stream>_overlay.mp4            H.264 of the overlays in arrival order (absent for a stream sent without
                                    overlays: such a stream is recorded as masks only)
    masks/<stream>_<frame_id>.png   the mask of every frame (6-digit id)
    index.jsonl                     one line per frame as it arrived: its header plus "recorded"
                                    {mask, video_frame, received_ns}; written as frames come, so it survives a crash
    recording.json                  written on close: per stream frame count, first/last id, gaps, duplicates

Close (or leave the ``with`` block) on every exit path: the video only appears, playable, on close.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from models.errors import BonestreamError
from pipeline.publish.files import VideoWriter, write_json_atomic, write_png_atomic
from pipeline.publish.message import FrameMessage


class RecordError(BonestreamError):
    """An output folder that already holds a recording, or a stream the video cannot take (size change)."""


@dataclass
class _StreamLog:
    frame_ids: list[int] = field(default_factory=list)
    video: VideoWriter | None = None

    def summary(self) -> dict[str, Any]:
        ids = sorted(set(self.frame_ids))
        gaps = [[a + 1, b - 1] for a, b in zip(ids, ids[1:]) if b > a + 1]
        return {
            "frames": len(self.frame_ids),
            "first": ids[0],
            "last": ids[-1],
            "gaps": gaps,
            "duplicates": len(self.frame_ids) - len(ids),
            "video": self.video.path.name if self.video else None,
            "video_frames": self.video.frames if self.video else 0,
        }


class Recorder:
    """Writes what a Subscriber or LosslessReceiver returns into ``out_dir`` (which must hold no recording yet)."""

    def __init__(self, out_dir: str | Path, *, fps: float = 30.0) -> None:
        self.out_dir = Path(out_dir)
        self.fps = fps
        index = self.out_dir / "index.jsonl"
        if index.exists():
            raise RecordError(f"{self.out_dir} already holds a recording ({index.name}); choose another folder")
        (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
        self._index = index.open("x", encoding="utf-8")
        self._streams: dict[str, _StreamLog] = {}
        self.frames = 0

    def write(self, msg: FrameMessage) -> None:
        log = self._streams.setdefault(msg.stream_id, _StreamLog())
        mask_name = f"masks/{msg.stream_id}_{msg.frame_id:06d}.png"
        write_png_atomic(self.out_dir / mask_name, msg.mask)
        video_frame = None
        if msg.overlay is not None:
            if log.video is None:
                log.video = VideoWriter(self.out_dir / f"{msg.stream_id}_overlay.mp4", self.fps)
            try:
                log.video.write(msg.overlay)
            except ValueError as exc:
                raise RecordError(f"frame {msg.frame_id} of {msg.stream_id}: {exc}") from None
            video_frame = log.video.frames - 1
        recorded = {"mask": mask_name, "video_frame": video_frame, "received_ns": msg.received_ns}
        self._index.write(json.dumps({**msg.header(), "recorded": recorded}) + "\n")
        self._index.flush()
        log.frame_ids.append(msg.frame_id)
        self.frames += 1

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "streams": {sid: log.summary() for sid, log in self._streams.items()}}

    def close(self) -> None:
        """Finalise every video and the index (each even if another fails), then write recording.json."""
        if self._index.closed:
            return
        with ExitStack() as stack:
            stack.callback(self._index.close)
            for log in self._streams.values():
                if log.video is not None:
                    stack.callback(log.video.close)
        write_json_atomic(self.out_dir / "recording.json", self.summary())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
