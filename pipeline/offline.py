"""Offline jobs: calibrate on reference frames, segment whole recordings into masks, overlays and a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from calibration.calibrate import CalibrationSettings, calibrate
from calibration.reference import Reference
from models.vit import DinoViT
from models.weights import WeightsIdentity
from pipeline.capture.frame import Frame, Source
from pipeline.capture.images import ImageSource
from pipeline.capture.open import open_sources, sample_frames
from pipeline.capture.ranges import FrameRange, select_frames
from pipeline.geometry_options import GeometryOptions
from pipeline.publish.files import VideoWriter, results_in, write_json_atomic, write_png_atomic
from pipeline.segment.segmenter import BoneSegmenter
from pipeline.stats import summarize


SEGMENT_RESULTS = ("summary.json", "evaluation.json", "masks/*.png", "overlays/*.png", "*_overlay.mp4")


def calibrate_sources(
    specs: Sequence[str],
    model: DinoViT,
    weights: WeightsIdentity,
    *,
    count: int | None,
    geometry: GeometryOptions = GeometryOptions(),
    settings: CalibrationSettings = CalibrationSettings(),
    progress: bool = True,
    device: str = "cpu",
) -> Reference:
    """Pick ``count`` frames evenly over each source (all images when None) and calibrate on them."""
    frames = sample_frames(open_sources(specs), count)
    geo = geometry.build(frames)
    return calibrate(model, weights, geo, [f.image for f in frames], [f.name for f in frames], settings, progress=progress, device=device)


def batched(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    it = iter(frames)
    while batch := list(islice(it, size)):
        yield batch


@dataclass
class SegmentRun:
    """What ``segment_sources`` wrote, frame by frame, for summary.json."""

    out_dir: Path
    frames: list[dict] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)


def _segment_source(
    seg: BoneSegmenter, source: Source, run: SegmentRun, *, frames: FrameRange, batch_size: int, overlay: bool, progress: bool
) -> None:
    masks_dir = run.out_dir / "masks"
    writer = None
    if overlay and not isinstance(source, ImageSource):  # streams get an overlay video, image sets overlay PNGs
        path = run.out_dir / f"{source.stem}_overlay.mp4"
        writer = VideoWriter(path, source.fps or 20.0)
        run.overlays.append(str(path))
    elif overlay:
        (run.out_dir / "overlays").mkdir(exist_ok=True)
    n, first, last = 0, None, None
    selected = select_frames(source, frames)
    try:
        with tqdm(total=selected.count, desc=source.stem, unit="frame", disable=not progress) as bar:
            for batch in batched(selected, batch_size):
                t0 = time.perf_counter()
                predictions = seg.predict([f.image for f in batch], [f"{source.name} frame {f.id}" for f in batch], overlay=overlay)
                for frame, pred in zip(batch, predictions):
                    write_png_atomic(masks_dir / f"{frame.name}.png", pred.mask)
                    if pred.overlay is not None:
                        if writer is not None:
                            writer.write(pred.overlay)
                        else:
                            write_png_atomic(run.out_dir / "overlays" / f"{frame.name}.png", pred.overlay)
                    run.frames.append(
                        {
                            "source": source.name,
                            "id": frame.id,
                            "name": frame.name,
                            "source_ts": frame.source_ts,
                            "foreground_fraction": pred.foreground_fraction,
                            "confidence": pred.confidence,
                            "timings_ms": pred.timings_ms,
                        }
                    )
                run.frames[-1]["batch_ms"] = (time.perf_counter() - t0) * 1e3
                n += len(batch)
                first, last = batch[0].id if first is None else first, batch[-1].id
                bar.update(len(batch))
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
    run.sources.append({"source": source.name, "frames": n, "first_id": first, "last_id": last, "fps": source.fps})


def segment_sources(
    seg: BoneSegmenter, specs: Sequence[str] | Sequence[Source], out_dir: str | Path, *, batch_size: int = 1, overlay: bool = True,
    progress: bool = True, frames: FrameRange = FrameRange(),
) -> Path:
    """Masks (0/255 PNG at source resolution) for ``frames`` of every source (specs, or sources already opened),
    overlays, and ``summary.json``; returns its path.

    A previous run's results in ``out_dir`` are removed first (the command refuses them without --overwrite): the
    summary, written last, says a run is complete, and no old mask can pass for a new one."""
    run = SegmentRun(Path(out_dir))
    sources = specs if all(isinstance(s, Source) for s in specs) else open_sources(specs)
    for old in results_in(run.out_dir, SEGMENT_RESULTS):  # the sources opened: a previous run's results go first
        old.unlink()
    (run.out_dir / "masks").mkdir(parents=True, exist_ok=True)
    started = time.time()
    for source in sources:
        _segment_source(seg, source, run, frames=frames, batch_size=batch_size, overlay=overlay, progress=progress)
    stages = {k: summarize([f["timings_ms"][k] for f in run.frames]) for k in ("prepare", *seg.stages)}
    summary = {
        "frames": len(run.frames),
        "sources": run.sources,
        "weights": seg.weights.to_dict(),
        "warning": seg.weights.warning,
        "reference": {"id": seg.reference.id, "foreground": list(seg.reference.foreground), "k": seg.reference.k},
        "geometry": seg.geometry.to_dict(),
        "backend": {"name": seg.backend.name, "device": seg.backend.device, "precision": seg.backend.precision},
        "range": frames.to_dict(),
        "batch_size": batch_size,
        "refine": seg.refine,
        "wall_s": time.time() - started,
        "timings_ms": stages,
        "overlays": run.overlays,
        "per_frame": run.frames,
    }
    path = run.out_dir / "summary.json"
    write_json_atomic(path, summary)
    return path

