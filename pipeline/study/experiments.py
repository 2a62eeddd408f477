"""The study's three experiments as JSON-ready results: reference-set sizes, cross-domain pairs, additive noise.

Each group (a set size, a domain same or cross, a noise level) holds its sets (frames, the calibration's
summary, per-image scores) and a summary of every image of every set: mean ± std (ddof=0) and pooled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from tqdm import tqdm

from pipeline.capture.open import spread_indices
from pipeline.evaluate import EMPTY_CONVENTION, RANDOM_WEIGHTS_NOTE, STD_CONVENTION, ImageScore, score_masks, summarise
from pipeline.segment.segmenter import Prediction
from pipeline.study.cosegment import Cosegmenter, reference_summary
from pipeline.study.labelled import RESIZE_RULE, LabelledFrame, check_count, draw_subsets, mask_at, resized
from pipeline.study.noise import add_noise, describe_scale, noise_fields

SET_MASKS = (
    "a set's masks are its frames' nearest-centroid labels under the set's own calibration (on the set these are the "
    "calibration labels), mapped to the frame at patch centres, zeros outside the ROI"
)
SCORING = (
    "Dice / IoU per image at the truth's own resolution (foreground = value > 0); a group's mean ± std and pooled "
    "scores run over every image of every set in it"
)
SUMMARY_FIELDS = ("mean_dice", "std_dice", "mean_iou", "std_iou", "pooled_dice", "pooled_iou", "n_images", "n_both_empty")


@dataclass
class ExperimentResult:
    """The JSON document and, for figures only, example overlays: (label, RGB overlay, truth mask)."""

    doc: dict
    examples: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)


def summary_of(scores: Sequence[ImageScore]) -> dict:
    report = summarise(list(scores))
    return {name: getattr(report, name) for name in SUMMARY_FIELDS}


def document(experiment: str, coseg: Cosegmenter, parameters: dict, groups: list[dict], conventions: list[str]) -> dict:
    """Groups with everything needed to reproduce and read them; random weights stated at the top."""
    random = coseg.weights.is_random
    return {
        "experiment": experiment,
        "random_weights": random,
        "weights": coseg.weights.to_dict(),
        "note": RANDOM_WEIGHTS_NOTE if random else "scores of the DINO weights named in 'weights'",
        "parameters": parameters,
        "calibration": asdict(coseg.settings),
        "geometry_options": asdict(coseg.geometry),
        "backend": asdict(coseg.backend),
        "conventions": [SET_MASKS, SCORING, EMPTY_CONVENTION, STD_CONVENTION, *conventions],
        "groups": groups,
    }


def _scores(preds: Sequence[Prediction], frames: Sequence[LabelledFrame]) -> list[ImageScore]:
    """Each prediction scored at its frame's own size (a frame resized for calibration is scored unresized)."""
    return [score_masks(mask_at(p.mask, f.size), f.truth, f.name) for p, f in zip(preds, frames)]


def _group(label: str, sets: list[dict], **fields: object) -> dict:
    scores = [ImageScore(**s) for st in sets for s in st["images"]]
    held = [ImageScore(**s) for st in sets for s in st.get("held_out", [])]
    return {"label": label, **fields, "sets": sets, "summary": summary_of(scores), "held_out_summary": summary_of(held) if held else None}


def run_sizes(
    coseg: Cosegmenter, frames: list[LabelledFrame], sizes: Sequence[int], *, repeats: int, seed: int,
    held_out: bool = False, progress: bool = True,
) -> ExperimentResult:
    """Co-segment random subsets of each size; ``held_out`` also labels the other labelled frames with each
    subset's reference (inductive) and scores them apart."""
    for size in sizes:
        check_count(frames, size, f"--sizes {size}")
    rng = np.random.default_rng(seed)
    plan = [(size, draw_subsets(len(frames), size, repeats, rng)) for size in sizes]
    groups = []
    with tqdm(total=sum(len(s) for _, s in plan), desc="sizes", unit="set", disable=not progress) as bar:
        for size, subsets in plan:
            sets = []
            for subset in subsets:
                chosen = [frames[i] for i in subset]
                rest = [f for i, f in enumerate(frames) if i not in subset] if held_out else []
                ref, preds, others = coseg.run([f.image for f in chosen], [f.name for f in chosen], others=[f.image for f in rest])
                entry = {"frames": [f.name for f in chosen], "reference": reference_summary(ref), "images": [asdict(s) for s in _scores(preds, chosen)]}
                if held_out:
                    entry["held_out"] = [asdict(s) for s in _scores(others, rest)]
                sets.append(entry)
                bar.update()
            groups.append(_group(f"{size} frames", sets, size=size))
    conventions = [
        f"sets: up to {repeats} distinct random subsets per size (numpy default_rng({seed})), every subset when fewer exist; "
        "a size above the number of labelled frames is refused"
    ]
    if held_out:
        conventions.append("held_out: the labelled frames outside a set, labelled by the set's reference (inductive), scored apart")
    params = {"sizes": list(sizes), "repeats": repeats, "seed": seed, "held_out": held_out, "labelled_frames": [f.name for f in frames]}
    return ExperimentResult(document("sizes", coseg, params, groups, conventions))


def run_pairs(
    coseg: Cosegmenter, domains: dict[str, list[LabelledFrame]], n: int, *, repeats: int, seed: int, progress: bool = True,
) -> ExperimentResult:
    """Per repeat, n random frames of each domain: each domain calibrated alone (same) and all domains' frames
    calibrated together (cross), scored per domain on the same frames."""
    for name, frames in domains.items():
        check_count(frames, n, f"--domain {name}")
    names = list(domains)
    size = domains[names[0]][0].size
    rng = np.random.default_rng(seed)
    same: dict[str, list[dict]] = {d: [] for d in names}
    cross: dict[str, list[dict]] = {d: [] for d in names}
    with tqdm(total=repeats * (len(names) + 1), desc="pairs", unit="set", disable=not progress) as bar:
        for _ in range(repeats):
            drawn = {d: [domains[d][i] for i in sorted(rng.choice(len(domains[d]), n, replace=False))] for d in names}
            for d in names:
                ref, preds, _ = coseg.run([f.image for f in drawn[d]], [f.name for f in drawn[d]])
                same[d].append({"frames": [f.name for f in drawn[d]], "reference": reference_summary(ref), "images": [asdict(s) for s in _scores(preds, drawn[d])]})
                bar.update()
            joint = [(d, f) for d in names for f in drawn[d]]
            ref, preds, _ = coseg.run([resized(f, size) for _, f in joint], [f"{d}.{f.name}" for d, f in joint])
            for d in names:
                mine = [p for p, (owner, _) in zip(preds, joint) if owner == d]
                cross[d].append({"frames": [f"{x}.{f.name}" for x, f in joint], "reference": reference_summary(ref), "images": [asdict(s) for s in _scores(mine, drawn[d])]})
            bar.update()
    groups = [_group(f"{d} {kind}", sets[d], domain=d, condition=kind) for d in names for kind, sets in (("same", same), ("cross", cross))]
    conventions = [
        f"per repeat, {n} frames drawn at random from each domain (numpy default_rng({seed})); same = a domain's frames "
        "calibrated alone, cross = all domains' drawn frames calibrated together, each scored on its own domain's frames",
        f"one reference has one frame size: for cross, frames of other domains are {RESIZE_RULE} to domain {names[0]}'s "
        f"{size[1]}x{size[0]}; their masks are resized back (nearest) and scored at their frames' own size",
    ]
    params = {"domains": {d: [f.name for f in fs] for d, fs in domains.items()}, "n": n, "repeats": repeats, "seed": seed}
    return ExperimentResult(document("pairs", coseg, params, groups, conventions))


def run_noise(
    coseg: Cosegmenter, frames: list[LabelledFrame], eps: Sequence[float], *, scale: str, n: int, seed: int, progress: bool = True,
) -> ExperimentResult:
    """For each eps, calibrate on and score n noisy frames (the study recomputes the co-segmentation per eps)."""
    check_count(frames, n, "--n")
    chosen = [frames[i] for i in spread_indices(len(frames), n)]
    names = [f.name for f in chosen]
    geometry = coseg.geometry_for([f.image for f in chosen], names)  # from the clean frames, fixed for every eps
    fields = noise_fields([f.size for f in chosen], seed)
    groups, examples = [], []
    for e in tqdm(eps, desc="noise", unit="eps", disable=not progress):
        noisy = [add_noise(f.image, e, fld, scale, f.name) for f, fld in zip(chosen, fields)]
        ref, preds, _ = coseg.run(noisy, names, geometry=geometry, overlay=True)
        sets = [{"frames": names, "reference": reference_summary(ref), "images": [asdict(s) for s in _scores(preds, chosen)]}]
        groups.append(_group(f"eps {e:g}", sets, eps=e))
        examples.append((f"eps {e:g}", preds[0].overlay, chosen[0].truth))
    conventions = [
        f"noise scale {describe_scale(scale)}; added to the gray frame (the same field reaches all three channels), "
        "clipped to 0..255 and rounded to uint8",
        f"one N(0,1) field per frame from numpy default_rng({seed}), the same for every eps; {n} frames evenly spread "
        "over the labelled set; the geometry (ROI, input size) is fitted on the clean frames and kept for every eps",
    ]
    params = {"eps": list(eps), "scale": scale, "n": n, "seed": seed, "frames": names}
    return ExperimentResult(document("noise", coseg, params, groups, conventions), examples)
