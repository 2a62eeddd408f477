"""The study's feature analyses over a set of frames: facet PCA images, CLS attention maps, a descriptor scatter
against truth, a contact sheet per frame and ``index.json`` listing every file.

The model runs twice over the frames: the first pass fits each (block, facet) PCA jointly over all frames
(streamed, so memory does not grow with the frame count) and keeps the attention, the second projects. Colours
then mean the same descriptor direction in every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from models.encoder import KeyEncoder, build_encoder
from models.facets import BLOCKS, FACETS, FacetOutput, extract_facets
from models.placement import device_guard
from models.preprocess import Geometry, to_gray
from models.vit import DinoViT
from models.weights import DEPTH, EMBED_DIM, WeightsIdentity
from pipeline.analysis.figures import (
    HEAT_ALPHA, HEAT_COLORMAP, FrameCanvas, contact_sheet, heat, scatter_figure, thumbnail, write_image,
)
from pipeline.analysis.pca import PCA, PCAAccumulator, to_uint8
from pipeline.analysis.truth import bone_fraction
from pipeline.capture.frame import Frame
from pipeline.publish.files import write_figure, write_json_atomic
from pipeline.segment.render import RANDOM_STAMP

ATTENTION_COLUMN = "attention (mean of heads)"
CONVENTIONS = {
    "facets": "query, key, value: the block's q, k, v of the patch tokens, B x h x w x 384 with the head index fastest "
    "(the layout of the encoder's keys); token: the block's output. Blocks are numbered 1-12",
    "pca": "per (block, facet), fitted jointly over all frames' patch descriptors (mean removed, no whitening); "
    "components 1-3 shown as R, G, B, each min-max scaled to 0..255 over all frames; each component's sign makes its "
    "largest loading positive",
    "attention": "CLS-to-patch attention of each block (softmax of the CLS query over all tokens, patch columns kept), "
    f"per head and the mean of the heads; each map min-max scaled over its own frame, {HEAT_COLORMAP} colour map "
    f"blended {HEAT_ALPHA:.0%} over the gray frame",
    "frame_mapping": "patch maps are drawn at frame resolution: each frame pixel takes its nearest patch centre, as "
    "masks are (Geometry.frame_lookup); the gray frame shows outside the ROI",
}


@dataclass(frozen=True)
class AnalysisSettings:
    """What to analyse. ``scatter``: the (block, facet) whose descriptors the truth scatter shows."""

    blocks: tuple[int, ...] = BLOCKS
    facets: tuple[str, ...] = FACETS
    scatter: tuple[int, str] = (DEPTH, "key")
    batch_size: int = 4


def _passes(
    encoder: KeyEncoder, geometry: Geometry, frames: Sequence[Frame], blocks: Sequence[int], facets: Sequence[str],
    batch_size: int, device: str, progress: bool, desc: str,
) -> Iterator[FacetOutput]:
    for start in tqdm(range(0, len(frames), batch_size), desc=desc, unit="batch", disable=not progress):
        chunk = frames[start : start + batch_size]
        planes = geometry.planes([f.image for f in chunk], [f.name for f in chunk])
        with device_guard(device) as dev:  # entered per batch: nothing leaks into the caller between yields
            out = extract_facets(encoder, torch.from_numpy(planes).to(dev), blocks, facets)
        yield out


def _joint_pca(
    passes: Callable[..., Iterator[FacetOutput]], fitted: Sequence[tuple[int, str]], blocks: Sequence[int]
) -> tuple[dict[tuple[int, str], PCA], dict[tuple[int, str], np.ndarray], dict[int, np.ndarray]]:
    """Two passes over the frames: accumulate each (block, facet) PCA and keep the attention, then project. Returns
    the fits, every frame's coordinates (N x h x w x 3 per fit) and the attention (N x heads x h x w per block)."""
    accumulators = {c: PCAAccumulator(EMBED_DIM) for c in fitted}
    attention: dict[int, list[np.ndarray]] = {b: [] for b in blocks}
    for out in passes(desc="fit PCA"):
        for c in fitted:
            accumulators[c].add(out.facets[c].cpu().numpy())
        for b in blocks:
            attention[b].append(out.attention[b].cpu().numpy())
    pcas = {c: acc.fit(3) for c, acc in accumulators.items()}
    projected: dict[tuple[int, str], list[np.ndarray]] = {c: [] for c in fitted}
    for out in passes(desc="project"):
        for c in fitted:
            projected[c].append(pcas[c].project(out.facets[c].cpu().numpy()))
    coords = {c: np.concatenate(v) for c, v in projected.items()}
    return pcas, coords, {b: np.concatenate(v) for b, v in attention.items()}


def _entry(path: Path, out_dir: Path, kind: str, frame: str | None, block: int | None = None,
           facet: str | None = None, head: int | str | None = None) -> dict:
    return {"path": path.relative_to(out_dir).as_posix(), "kind": kind, "frame": frame, "block": block, "facet": facet, "head": head}


def _frame_files(
    frame: Frame, i: int, canvas: FrameCanvas, colours: Mapping[tuple[int, str], np.ndarray],
    attention: Mapping[int, np.ndarray], settings: AnalysisSettings, out_dir: Path, stamp: str | None, title: str,
) -> list[dict]:
    """One frame's PCA images, attention maps and contact sheet under ``out_dir/<frame>/``."""
    gray = to_gray(frame.image, frame.name)
    folder = out_dir / frame.name
    files, cells = [], {}
    for block in settings.blocks:
        for facet in settings.facets:
            image = canvas.paint(gray, colours[block, facet][i])
            path = folder / "pca" / f"block{block:02d}_{facet}.png"
            write_image(path, image, stamp)
            files.append(_entry(path, out_dir, "pca", frame.name, block, facet))
            cells[block, facet] = thumbnail(image)
        maps = attention[block][i]
        for head, values in [*enumerate(maps), ("mean", maps.mean(axis=0))]:
            image = canvas.paint(gray, heat(values), HEAT_ALPHA)
            path = folder / "attention" / f"block{block:02d}_{'mean' if head == 'mean' else f'head{head}'}.png"
            write_image(path, image, stamp)
            files.append(_entry(path, out_dir, "attention", frame.name, block, head=head))
        cells[block, ATTENTION_COLUMN] = thumbnail(image)  # the last map drawn is the mean
    path = folder / "contact_sheet.png"
    write_figure(contact_sheet(cells, settings.blocks, [*settings.facets, ATTENTION_COLUMN], f"{frame.name}: {title}"), path, stamp)
    files.append(_entry(path, out_dir, "contact_sheet", frame.name))
    return files


def _scatter(
    frames: Sequence[Frame], truth: Mapping[str, np.ndarray], geometry: Geometry, coords: np.ndarray, pca: PCA,
    settings: AnalysisSettings, out_dir: Path, stamp: str | None,
) -> tuple[dict, dict]:
    """The pooled scatter of every frame's patches and its index entry and description."""
    block, facet = settings.scatter
    fraction = np.stack([bone_fraction(truth[f.name], geometry) for f in frames]).ravel()
    xy = coords[..., :2].reshape(-1, 2)
    keep = np.isfinite(fraction)
    title = (f"block {block} {facet}s of {len(frames)} frames, {int(keep.sum())} patches pooled:\n"
             "PCA components 1 and 2 of the joint fit; colour = bone fraction of the patch's cell")
    axes = tuple(f"PC{c + 1} ({pca.explained[c]:.1%} of the variance)" for c in range(2))
    path = out_dir / f"scatter_block{block:02d}_{facet}.png"
    write_figure(scatter_figure(xy[keep], fraction[keep], title, axes), path, stamp)
    about = {
        "descriptors": f"block {block} {facet}", "projection": "PCA components 1 and 2 of the joint fit (unscaled)",
        "colour": "bone fraction of each patch's cell (the frame pixels nearest its centre) in the truth mask",
        "pooled": "all frames in one figure", "patches": int(keep.sum()),
        "bone_patches": int((fraction[keep] >= 0.5).sum()),
    }
    return _entry(path, out_dir, "scatter", None, block, facet), about


def analyze(
    model: DinoViT, identity: WeightsIdentity, geometry: Geometry, frames: Sequence[Frame], out_dir: str | Path,
    settings: AnalysisSettings = AnalysisSettings(), truth: Mapping[str, np.ndarray] | None = None, *,
    reference: str | None = None, progress: bool = True, device: str = "cpu",
) -> Path:
    """Write the analyses of ``frames`` under ``out_dir`` and return the path of ``index.json``, written last (a
    previous run's index is removed first, so an index always lists one complete run)."""
    out_dir = Path(out_dir)
    index_path = out_dir / "index.json"
    index_path.unlink(missing_ok=True)
    shown = [(b, f) for b in settings.blocks for f in settings.facets]
    fitted = shown + ([settings.scatter] if truth is not None and settings.scatter not in shown else [])
    blocks, facets = sorted({b for b, _ in fitted}), sorted({f for _, f in fitted})
    encoder = build_encoder(model, geometry, device)
    passes = partial(_passes, encoder, geometry, frames, blocks, facets, settings.batch_size, device, progress)
    pcas, coords, maps = _joint_pca(passes, fitted, settings.blocks)
    colours = {c: to_uint8(coords[c]) for c in shown}

    stamp = RANDOM_STAMP if identity.is_random else None
    title = f"PCA 1-3 as RGB per (block, facet), fitted over {len(frames)} frames; weights {identity.label}"
    canvas = FrameCanvas(geometry)
    files = []
    for i, frame in enumerate(tqdm(frames, desc="figures", unit="frame", disable=not progress)):
        files += _frame_files(frame, i, canvas, colours, maps, settings, out_dir, stamp, title)
    scatter = None
    if truth is not None:
        entry, scatter = _scatter(frames, truth, geometry, coords[settings.scatter], pcas[settings.scatter], settings, out_dir, stamp)
        files.append(entry)
    index = {
        "command": "analyze",
        "random_weights": identity.is_random,
        "weights": identity.to_dict(),
        "note": identity.warning,
        "geometry": geometry.to_dict(),
        "reference": reference,
        "frames": [f.name for f in frames],
        "blocks": list(settings.blocks),
        "facets": list(settings.facets),
        "pca": [
            {"block": b, "facet": f, "descriptors": int(coords[b, f][..., 0].size),
             "explained_variance_ratio": pcas[b, f].explained.tolist()}
            for b, f in fitted
        ],
        "scatter": scatter,
        "conventions": CONVENTIONS,
        "files": files,
    }
    write_json_atomic(index_path, index)
    return index_path
