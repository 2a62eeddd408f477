"""An experiment's outputs: experiment.json, experiment.md (a markdown table) and the PNG figures the write-up
shows, every one stamped RANDOM WEIGHTS when the scores come from random weights."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.publish.files import write_bytes_atomic, write_figure, write_json_atomic  # noqa: E402
from pipeline.study.experiments import ExperimentResult  # noqa: E402

METRICS = {"dice": "Dice", "iou": "IoU"}
STAMP = "RANDOM WEIGHTS: plumbing only, these scores say nothing about bone"
TRUTH_RGB = (0.0, 0.9, 1.0)  # cyan truth outline beside the amber predicted bone


def write_experiment(result: ExperimentResult, out_dir: Path) -> list[Path]:
    """experiment.json, experiment.md and the figures in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "experiment.json", out_dir / "experiment.md"
    write_json_atomic(json_path, result.doc)
    write_bytes_atomic(md_path, markdown(result.doc).encode())
    return [json_path, md_path, *write_figures(result, out_dir)]


def _pm(summary: dict | None, metric: str) -> str:
    return "-" if summary is None else f"{summary[f'mean_{metric}']:.3f} ± {summary[f'std_{metric}']:.3f}"


def markdown(doc: dict) -> str:
    """Title, the weights line, one row per group (with held-out columns when scored), the conventions."""
    held = any(g["held_out_summary"] for g in doc["groups"])
    lines = [f"# bonestream experiment {doc['experiment']}", ""]
    if doc["random_weights"]:
        lines += [f"**{STAMP}** (weights {doc['weights'].get('label', 'random')}).", ""]
    header = "| group | sets | images | Dice mean ± std | IoU mean ± std | pooled Dice | pooled IoU |"
    rule = "|---|---|---|---|---|---|---|"
    if held:
        header += " held-out images | held-out Dice mean ± std | held-out IoU mean ± std |"
        rule += "---|---|---|"
    lines += [header, rule]
    for g in doc["groups"]:
        s = g["summary"]
        row = f"| {g['label']} | {len(g['sets'])} | {s['n_images']} | {_pm(s, 'dice')} | {_pm(s, 'iou')} | {s['pooled_dice']:.3f} | {s['pooled_iou']:.3f} |"
        if held:
            h = g["held_out_summary"]
            row += f" {h['n_images'] if h else 0} | {_pm(h, 'dice')} | {_pm(h, 'iou')} |"
        lines.append(row)
    lines += ["", f"Weights: `{doc['weights'].get('label', doc['weights'])}`. {doc['note']}.", ""]
    lines += [f"- {c}" for c in doc["conventions"]]
    return "\n".join(lines) + "\n"


def write_figures(result: ExperimentResult, out_dir: Path) -> list[Path]:
    doc = result.doc
    stamp = STAMP if doc["random_weights"] else None
    kind = doc["experiment"]
    if kind == "pairs":
        return [_save(_pairs_figure(doc), out_dir / "pairs.png", stamp)]
    x_name, x_label = ("size", "reference-set size (frames)") if kind == "sizes" else ("eps", f"noise eps ({doc['parameters']['scale']} scale)")
    paths = [_save(_curve_figure(doc, x_name, x_label), out_dir / f"{kind}.png", stamp)]
    if result.examples:
        paths.append(_save(_strip_figure(result.examples), out_dir / f"{kind}_examples.png", stamp))
    return paths


def _curve_figure(doc: dict, x_name: str, x_label: str) -> plt.Figure:
    """Dice and IoU mean ± std against the experiment's variable (held-out frames dashed)."""
    groups = doc["groups"]
    x = [g[x_name] for g in groups]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (metric, name), colour in zip(METRICS.items(), ("tab:blue", "tab:orange")):
        for key, style, what in (("summary", "-", ""), ("held_out_summary", "--", " held-out")):
            if groups[0][key] is None:
                continue
            mean = [g[key][f"mean_{metric}"] for g in groups]
            std = [g[key][f"std_{metric}"] for g in groups]
            ax.errorbar(x, mean, yerr=std, fmt="o" + style, color=colour, capsize=3, label=f"{name}{what}")
    ax.set_xticks(x)
    ax.set_xlabel(x_label)
    ax.set_ylabel("score (mean ± std over images)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"bonestream experiment {doc['experiment']}", fontsize=10)
    return fig


def _pairs_figure(doc: dict) -> plt.Figure:
    """Per domain, same-domain and cross-domain bars (mean ± std), Dice and IoU side by side."""
    domains = list(dict.fromkeys(g["domain"] for g in doc["groups"]))
    by = {(g["domain"], g["condition"]): g["summary"] for g in doc["groups"]}
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    pos = np.arange(len(domains))
    for ax, (metric, name) in zip(axes, METRICS.items()):
        for shift, condition, colour in ((-0.2, "same", "tab:blue"), (0.2, "cross", "tab:orange")):
            mean = [by[(d, condition)][f"mean_{metric}"] for d in domains]
            std = [by[(d, condition)][f"std_{metric}"] for d in domains]
            ax.bar(pos + shift, mean, 0.4, yerr=std, capsize=3, color=colour, label=f"{condition}-domain")
        ax.set_xticks(pos, domains)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score (mean ± std over images)")
    axes[0].legend(fontsize=8)
    return fig


def _strip_figure(examples: list[tuple[str, np.ndarray, np.ndarray]]) -> plt.Figure:
    """One panel per example: the product's overlay (predicted bone in amber) with the truth outlined in cyan."""
    fig, axes = plt.subplots(1, len(examples), figsize=(2.6 * len(examples), 2.8), squeeze=False)
    for ax, (label, overlay, truth) in zip(axes[0], examples):
        ax.imshow(overlay)
        if truth.any():
            ax.contour(truth.astype(np.uint8), levels=[0.5], colors=[TRUTH_RGB], linewidths=0.8)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    return fig


def _save(fig: plt.Figure, path: Path, stamp: str | None) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.93) if stamp else None)  # room for the stamp across the top
    write_figure(fig, path, stamp)
    plt.close(fig)
    return path

