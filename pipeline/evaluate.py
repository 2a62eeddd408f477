"""Dice / IoU of predicted bone masks against ground truth, per image and pooled.

Both the per-image mean (every image weighs the same) and the pooled score (every
pixel weighs the same) are reported, because they diverge when bone sizes vary.
When the truth is a bone surface (a thin curve) the report adds surface distances
(pipeline/surface.py), in pixels and, given a pixel spacing, in mm.
The report carries the weights provenance from the segment run, so scores from
random weights can never be mistaken for a quality claim.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from models.errors import BonestreamError
from pipeline.choices import THIN_RULE, TRUTH_KINDS
from pipeline.publish.files import write_json_atomic
from pipeline.surface import DISTANCE_CONVENTION, SURFACE_DEFINITION, SURFACE_EMPTY_CONVENTION, is_thin, surface_distance

EMPTY_CONVENTION = "an image where prediction and truth are both empty scores Dice = IoU = 1 and is counted in n_both_empty"
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: these scores test plumbing only and say nothing about bone segmentation quality"
STD_CONVENTION = "std is the population std (ddof=0) over images"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp"})


class EvaluationError(BonestreamError):
    """The prediction and truth folders cannot be scored against each other."""


@dataclass(frozen=True)
class ImageScore:
    """Scores of one image; intersection is kept so pooled scores need no re-reading."""

    name: str
    dice: float
    iou: float
    pred_pixels: int
    truth_pixels: int
    both_empty: bool
    intersection: int
    assd_px: float | None = None  # surface distances when the truth is a surface; None there when undefined
    hd95_px: float | None = None


def score_masks(pred: np.ndarray, truth: np.ndarray, name: str = "", surface: bool = False) -> ImageScore:
    """Score one mask pair; any value > 0 is foreground. ``surface``: the truth is a bone surface, so the
    surface distances are computed too."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"{name or 'mask'}: prediction shape {p.shape} != truth shape {t.shape}")
    inter = int(np.count_nonzero(p & t))
    n_pred, n_truth = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    dice, iou = _dice_iou(inter, n_pred, n_truth)
    distance = surface_distance(p, t) if surface else None
    assd, hd95 = (distance.assd, distance.hd95) if distance else (None, None)
    return ImageScore(name, dice, iou, n_pred, n_truth, n_pred == n_truth == 0, inter, assd, hd95)


@dataclass
class EvaluationReport:
    """Per-image scores and their summaries; table() is what the CLI prints."""

    images: list[ImageScore]
    mean_dice: float
    std_dice: float
    mean_iou: float
    std_iou: float
    pooled_dice: float
    pooled_iou: float
    n_images: int
    n_both_empty: int
    unmatched_predictions: list[str]
    weights: dict | None
    note: str
    surface: dict | None = None  # surface-distance summary (summarise_surface) when the truth is a surface

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, per_image: bool = True) -> str:
        """Aligned per-image rows (optional), then mean ± std, pooled scores and the notes."""
        width = max([len("image")] + [len(s.name) for s in self.images])
        header = f"{'image':<{width}}  {'dice':>6}  {'iou':>6}  {'pred_px':>9}  {'truth_px':>9}"
        if self.surface:
            header += f"  {'assd_px':>8}  {'hd95_px':>8}"
        lines = []
        if per_image:
            lines += [header, "-" * len(header)]
            for s in self.images:
                empty = "  (both empty)" if s.both_empty else ""
                row = f"{s.name:<{width}}  {s.dice:6.4f}  {s.iou:6.4f}  {s.pred_pixels:9d}  {s.truth_pixels:9d}"
                if self.surface:
                    row += f"  {_fmt(s.assd_px):>8}  {_fmt(s.hd95_px):>8}"
                lines.append(row + empty)
            lines.append("-" * len(header))
        lines += [
            f"mean ± std dice  {self.mean_dice:.4f} ± {self.std_dice:.4f}",
            f"mean ± std iou   {self.mean_iou:.4f} ± {self.std_iou:.4f}",
            f"pooled dice      {self.pooled_dice:.4f}",
            f"pooled iou       {self.pooled_iou:.4f}",
            f"images {self.n_images}, both empty {self.n_both_empty}",
        ]
        if self.surface:
            lines += _surface_lines(self.surface)
        if self.unmatched_predictions:
            lines.append(f"predictions without truth (ignored): {', '.join(self.unmatched_predictions)}")
        if self.weights is not None:
            lines.append(f"weights: {self.weights.get('label', json.dumps(self.weights, sort_keys=True))}")
        lines += [f"note: {line}" for line in self.note.splitlines()]
        return "\n".join(lines)


def summarise(
    images: list[ImageScore], weights: dict | None = None, unmatched_predictions: list[str] | None = None,
    *, surface: bool = False, spacing_mm: float | None = None,
) -> EvaluationReport:
    """Aggregate per-image scores into a report (mean, population std, pooled); ``surface``: the images carry
    surface distances, summarised too (in mm as well when ``spacing_mm`` is known)."""
    if not images:
        raise EvaluationError("no images to summarise")
    dice = np.array([s.dice for s in images])
    iou = np.array([s.iou for s in images])
    pooled_dice, pooled_iou = _dice_iou(
        sum(s.intersection for s in images), sum(s.pred_pixels for s in images), sum(s.truth_pixels for s in images)
    )
    notes = [EMPTY_CONVENTION, STD_CONVENTION]
    if weights is not None and weights.get("kind") == "random":
        notes.append(RANDOM_WEIGHTS_NOTE)
    return EvaluationReport(
        images=list(images),
        mean_dice=float(dice.mean()),
        std_dice=float(dice.std(ddof=0)),
        mean_iou=float(iou.mean()),
        std_iou=float(iou.std(ddof=0)),
        pooled_dice=pooled_dice,
        pooled_iou=pooled_iou,
        n_images=len(images),
        n_both_empty=sum(s.both_empty for s in images),
        unmatched_predictions=sorted(unmatched_predictions or []),
        weights=weights,
        note="\n".join(notes),
        surface=summarise_surface(images, spacing_mm) if surface else None,
    )


def summarise_surface(images: list[ImageScore], spacing_mm: float | None = None) -> dict:
    """Mean ± population std of ASSD and HD95 over the images where both surfaces exist, with the conventions."""
    defined = [s for s in images if s.assd_px is not None]
    summary: dict = {
        "definition": SURFACE_DEFINITION,
        "distances": DISTANCE_CONVENTION,
        "empty": SURFACE_EMPTY_CONVENTION,
        "spacing_mm": spacing_mm,
        "n_defined": len(defined),
        "n_undefined": len(images) - len(defined),
    }
    for metric in ("assd", "hd95"):
        values = np.array([getattr(s, f"{metric}_px") for s in defined], dtype=np.float64)
        mean, std = (float(values.mean()), float(values.std(ddof=0))) if len(values) else (None, None)
        summary[f"{metric}_px"] = {"mean": mean, "std": std}
        if spacing_mm is not None:
            summary[f"{metric}_mm"] = {"mean": _scaled(mean, spacing_mm), "std": _scaled(std, spacing_mm)}
    return summary


def evaluate_dirs(pred_dir: Path, truth_dir: Path, truth_kind: str = "auto", spacing_mm: float | None = None) -> EvaluationReport:
    """Score every truth mask against the prediction with the same file stem.

    pred_dir may be a segment output folder (its masks/ subfolder is used and its
    summary.json "weights" is carried into the report) or a plain folder of masks.
    ``truth_kind``: surface (curves: Dice/IoU and surface distances), region (Dice/IoU), or auto (THIN_RULE).
    ``spacing_mm``: mm per pixel (isotropic), for the surface distances in mm.
    """
    if truth_kind not in TRUTH_KINDS:
        raise EvaluationError(f"truth kind {truth_kind!r} is not one of {', '.join(TRUTH_KINDS)}")
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    mask_dir = pred_dir / "masks" if (pred_dir / "masks").is_dir() else pred_dir
    preds, truths = images_by_stem(mask_dir), images_by_stem(truth_dir)
    if not truths:
        raise EvaluationError(f"no truth images in {truth_dir}")
    if not preds:
        raise EvaluationError(f"no prediction images in {mask_dir}")
    missing = sorted(set(truths) - set(preds))
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise EvaluationError(f"no prediction in {mask_dir} for truth image(s): {shown}")
    surface = (truth_kind == "surface") or (truth_kind == "auto" and truths_are_surfaces(truths))
    scores = []
    for stem in sorted(truths):
        pred, truth = read_mask(preds[stem]), read_mask(truths[stem])
        if pred.shape != truth.shape:
            raise EvaluationError(
                f"size mismatch for {stem}: prediction {preds[stem]} is {pred.shape}, "
                f"truth {truths[stem]} is {truth.shape}"
            )
        scores.append(score_masks(pred, truth, stem, surface))
    report = summarise(scores, _read_weights(pred_dir), sorted(set(preds) - set(truths)), surface=surface, spacing_mm=spacing_mm)
    if report.surface is not None:
        report.surface["truth_kind"] = THIN_RULE if truth_kind == "auto" else "given: --truth-kind surface"
    return report


def truths_are_surfaces(truths: dict[str, Path]) -> bool:
    """THIN_RULE over the truth files: True when all non-empty ones are thin, False when none is (or all are
    empty); a folder that mixes both is an error naming one of each."""
    thin: dict[bool, str] = {}
    for stem in sorted(truths):
        mask = read_mask(truths[stem])
        if mask.any():
            thin.setdefault(is_thin(mask), str(truths[stem]))
    if len(thin) == 2:
        raise EvaluationError(
            f"truth masks mix surfaces ({thin[True]}) and regions ({thin[False]}); pass --truth-kind surface or region"
        )
    return True in thin


def write_report(report: EvaluationReport, path: Path) -> None:
    write_json_atomic(path, report.to_dict())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _surface_lines(surface: dict) -> list[str]:
    lines = []
    for metric in ("assd", "hd95"):
        px = surface[f"{metric}_px"]
        line = f"mean ± std {metric:<6}{_fmt(px['mean'])} ± {_fmt(px['std'])} px"
        if f"{metric}_mm" in surface:
            mm = surface[f"{metric}_mm"]
            line += f"  ({_fmt(mm['mean'])} ± {_fmt(mm['std'])} mm at {surface['spacing_mm']:g} mm/px)"
        lines.append(line)
    lines.append(f"surface distances: {surface['n_defined']} images, undefined (one surface empty) {surface['n_undefined']}")
    lines += [f"note: {surface[key]}" for key in ("definition", "distances", "empty")]
    return lines


def _dice_iou(inter: int, n_pred: int, n_truth: int) -> tuple[float, float]:
    if n_pred + n_truth == 0:
        return 1.0, 1.0  # EMPTY_CONVENTION
    return 2.0 * inter / (n_pred + n_truth), inter / (n_pred + n_truth - inter)


def images_by_stem(folder: Path) -> dict[str, Path]:
    """The image files of a folder by file stem, the name masks are matched on (a repeated stem is an error)."""
    if not folder.is_dir():
        raise EvaluationError(f"not a folder: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in found:
                raise EvaluationError(f"ambiguous stem {path.stem!r}: {found[path.stem]} and {path}")
            found[path.stem] = path
    return found


def read_mask(path: Path) -> np.ndarray:
    """Read a mask at its native depth; a colour mask is foreground where any colour channel is."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise EvaluationError(f"cannot read image {path}")
    if image.ndim == 3:  # ignore alpha: it is opaque everywhere in ordinary masks
        image = image[..., :3].max(axis=2) if image.shape[2] >= 3 else image[..., 0]
    return image


def _read_weights(pred_dir: Path) -> dict | None:
    summary = pred_dir / "summary.json"
    if not summary.is_file():
        return None
    try:
        weights = json.loads(summary.read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError) as exc:
        raise EvaluationError(f"cannot read weights from {summary}: {exc}") from exc
    if weights is not None and not isinstance(weights, dict):
        raise EvaluationError(f"{summary}: 'weights' must be an object, got {type(weights).__name__}")
    return weights
