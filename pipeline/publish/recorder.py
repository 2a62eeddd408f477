"""Recording of received frames: overlay video, one mask PNG per frame, and every header.

Layout of the output folder::

    <stream>_overlay.mp4            H.264 of the overlays in arrival order (absent for a stream sent without
                                    overlays: such a stream is recorded as masks only); when the frame size changes
                                    mid-stream the video goes on in a new segment, <stream>_overlay_2.mp4, ...
    masks/<stream>_<frame_id>.png   the mask of every frame (6-digit id); after a sender restarted (ids went back
                                    or leapt ahead) masks/<stream>_s<n>_<frame_id>.png, so none is overwritten
    index.jsonl                     one line per frame: its header plus "recorded" {mask, video, video_frame,
                                    received_ns}; written as frames come (a frame with video once the MP4 holds it,
                                    i.e. when the stream's next frame is muxed), so after a crash it lists only
                                    frames that are on disk
    recording.json                  written on close: per stream frame count, first/last id, gaps, duplicates,
                                    video segments

Close (or leave the ``with`` block) on every exit path: a video appears under its name, complete, on close. Until
then it is ``.<name>.partial``, fragmented at every frame: after a kill or a full disk it still plays every frame
the index lists with a ``video_frame``.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from models.errors import BonestreamError
from pipeline.publish.files import VideoWriter, write_json_atomic, write_png_atomic
from pipeline.publish.message import FrameMessage
from pipeline.publish.subscriber import MAX_GAP

log = logging.getLogger(__name__)
INDEX = "index.jsonl"
MAX_STREAMS = 64  # streams one recording takes; frames of further streams are refused and counted
MAX_SEGMENTS = 32  # video segments per stream (one per frame-size change); overlays beyond are counted, not recorded


class RecordError(BonestreamError):
    """An output folder that already holds a recording, or a frame the recording cannot take."""


@dataclass
class _StreamLog:
    sequences: list[list[int]] = field(default_factory=list)  # frame ids, a new list whenever the sender restarted
    videos: list[VideoWriter] = field(default_factory=list)  # segments in order; the last one is being written
    video_size: tuple[int, ...] | None = None
    held: str | None = None  # index line of the last video frame: the MP4 muxer writes a frame when the next arrives

    @property
    def video(self) -> VideoWriter | None:
        return self.videos[-1] if self.videos else None

    def sequence_of(self, frame_id: int) -> int:
        """The sequence ``frame_id`` belongs to: a new one when ids go back or leap ahead (a restarted sender, as the
        subscriber counts jumps), so a restart never overwrites the masks of the frames recorded before it. A sequence
        left empty by a failed write is reused."""
        current = self.sequences[-1] if self.sequences else None
        if current is None or (current and (frame_id < current[-1] or frame_id > current[-1] + MAX_GAP)):
            self.sequences.append([])
        return len(self.sequences) - 1

    def summary(self) -> dict[str, Any]:
        ranges = [sorted(set(ids)) for ids in self.sequences if ids]  # (a frame whose write failed left no id)
        gaps = [[a + 1, b - 1] for ids in ranges for a, b in zip(ids, ids[1:]) if b > a + 1]
        return {
            "frames": sum(map(len, self.sequences)),
            "first": ranges[0][0] if ranges else None,
            "last": ranges[-1][-1] if ranges else None,
            "gaps": gaps,
            "duplicates": sum(len(ids) - len(set(ids)) for ids in self.sequences),
            "sequences": [[r[0], r[-1]] for r in ranges],  # first and last id of each run the sender started anew
            "video": self.videos[0].path.name if self.videos else None,
            "video_frames": sum(v.frames for v in self.videos),
            "video_segments": [{"file": v.path.name, "frames": v.frames} for v in self.videos],
        }


class Recorder:
    """Writes what a Subscriber or LosslessReceiver returns into ``out_dir`` (which must hold no recording yet)."""

    def __init__(self, out_dir: str | Path, *, fps: float = 30.0) -> None:
        self.out_dir = Path(out_dir)
        self.fps = fps
        self.refuse_existing(self.out_dir)
        (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
        self._index = (self.out_dir / INDEX).open("x", encoding="utf-8")
        self._streams: dict[str, _StreamLog] = {}
        self.frames = 0
        self.refused = 0  # frames of streams beyond MAX_STREAMS
        self.unrecorded_overlays = 0  # overlays of frames beyond MAX_SEGMENTS size changes

    @staticmethod
    def refuse_existing(out_dir: Path) -> None:
        """A recording is never overwritten: a folder that holds one is refused (commands check before any work)."""
        if (out_dir / INDEX).exists():
            raise RecordError(f"{out_dir} already holds a recording ({INDEX}); choose another folder")

    def write(self, msg: FrameMessage) -> bool:
        """Record ``msg``; False (and counted in ``refused``) for a new stream beyond MAX_STREAMS: a flood of stream
        ids cannot open files without bound. A write the disk refuses (full, quota) is a RecordError naming the file:
        the frames recorded before it stay on disk, listed in the index, their video playable."""
        try:
            return self._write(msg)
        except OSError as exc:
            raise RecordError(
                f"{exc.strerror}: {exc.filename}: recording of frame {msg.frame_id} ({msg.stream_id}) failed after "
                f"{self.frames} frames; {INDEX} lists every frame on disk and the videos play up to them"
            ) from None

    def _write(self, msg: FrameMessage) -> bool:
        log = self._streams.get(msg.stream_id)
        if log is None:
            if len(self._streams) >= MAX_STREAMS:
                self.refused += 1
                return False
            log = self._streams[msg.stream_id] = _StreamLog()
        sequence = log.sequence_of(msg.frame_id)
        restart = f"_s{sequence}" if sequence else ""
        mask_name = f"masks/{msg.stream_id}{restart}_{msg.frame_id:06d}.png"
        write_png_atomic(self.out_dir / mask_name, msg.mask)
        video_name = video_frame = None
        overlay = msg.overlay
        if overlay is not None and (log.video is None or overlay.shape != log.video_size):
            if len(log.videos) >= MAX_SEGMENTS:  # sizes that keep changing: masks and index go on, video does not
                self.unrecorded_overlays += 1
                overlay = None
            else:
                if log.video is not None:  # the frame size changed mid-stream: finish this segment, start the next
                    log.video.close()
                    self._release(log)
                suffix = f"_{len(log.videos) + 1}" if log.videos else ""
                log.videos.append(VideoWriter(self.out_dir / f"{msg.stream_id}_overlay{suffix}.mp4", self.fps, fragmented=True))
                log.video_size = overlay.shape
        if overlay is not None:
            try:
                log.video.write(overlay)
            except ValueError as exc:
                raise RecordError(f"frame {msg.frame_id} of {msg.stream_id}: {exc}") from None
            video_name, video_frame = log.video.path.name, log.video.frames - 1
        recorded = {"mask": mask_name, "video": video_name, "video_frame": video_frame, "received_ns": msg.received_ns}
        line = json.dumps({**msg.header(), "recorded": recorded}) + "\n"
        if video_name is not None:  # listed once its video frame is on disk: when the next one is muxed, or on close
            line, log.held = log.held, line
        if line is not None:
            self._index.write(line)
            self._index.flush()
        log.sequences[sequence].append(msg.frame_id)
        self.frames += 1
        return True

    def _release(self, log: _StreamLog) -> None:
        """Index the stream's held frame: its video segment has been closed, so the frame is on disk."""
        if log.held is not None:
            self._index.write(log.held)
            self._index.flush()
            log.held = None

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "refused_streams_frames": self.refused, "unrecorded_overlays": self.unrecorded_overlays, "streams": {sid: log.summary() for sid, log in self._streams.items()}}

    def close(self) -> None:
        """Finalise every video and the index (each even if another fails), then write recording.json. On a full
        disk that is a RecordError; what could not be finalised stays as written (see the module docstring)."""
        if self._index.closed:
            return
        try:
            with ExitStack() as stack:  # callbacks run last-in first: videos, then their held lines, then the index
                stack.callback(self._index.close)
                for log in self._streams.values():
                    stack.callback(self._release, log)
                    for video in log.videos:
                        stack.callback(video.close)
            write_json_atomic(self.out_dir / "recording.json", self.summary())
        except OSError as exc:
            raise RecordError(f"{exc.strerror}: {exc.filename}: the recording could not be finalised; {INDEX} lists every frame on disk") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except RecordError as error:
            if exc_type is None:
                raise
            log.debug("%s", error)  # the error already on its way out is the one line to report
