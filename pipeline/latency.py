"""Per-frame stage timestamps -> a latency report in Holoscan's format (JSON) and its CDF (PNG).

Holoscan's release benchmarks skip the first and last 10 frames and report avg, percentiles up to p99.9,
max, std, tail (p95 to max) and flatness (p10 to p90) per stage and end to end; so do we.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.publish.files import write_bytes_atomic, write_json_atomic
from pipeline.stats import summarize

# Consecutive timestamps each frame carries, in pipeline order; a stage is the span between two of them.
MARKS = ("captured", "inferred", "labelled", "published")
STAGES = {
    "inference (capture -> keys -> labels)": ("captured", "inferred"),
    "mask + overlay": ("inferred", "labelled"),
    "publish": ("labelled", "published"),
    "end to end (captured -> published)": ("captured", "published"),
}


def trim(values: Sequence[Any], skip: int) -> list[Any]:
    """Drop ``skip`` items at each end (warm-up and drain), unless too few would remain."""
    return list(values[skip : len(values) - skip]) if len(values) > 2 * skip else list(values)


def latency_report(
    stamps: Sequence[Mapping[str, int]], *, skip: int = 10, compute_ms: Mapping[str, Sequence[float]] | None = None, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``stamps``: per published frame, monotonic ns for each of MARKS. ``compute_ms``: optional pure compute
    times (e.g. the model alone) reported beside the stage spans, which also include queue waits."""
    kept = trim(stamps, skip)
    stages = {name: summarize([(s[b] - s[a]) / 1e6 for s in kept]) for name, (a, b) in STAGES.items()}
    report: dict[str, Any] = {
        "format": "holoscan-style latency report (ms)",
        "frames_measured": len(kept),
        "frames_total": len(stamps),
        "skipped_each_end": skip if len(stamps) > 2 * skip else 0,
        "stages": stages,
    }
    if compute_ms:
        report["compute"] = {name: summarize(trim(v, skip)) for name, v in compute_ms.items()}
        infer = report["compute"].get("model")
        e2e = stages["end to end (captured -> published)"]
        if infer and infer.get("count") and e2e.get("count"):
            report["pipeline_overhead_ms"] = {"p50": e2e["p50"] - infer["p50"], "p99": e2e["p99"] - infer["p99"]}
    report.update(meta or {})
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """Fixed-width table of the stages, as printed at the end of a run."""
    cols = ("avg", "p50", "p90", "p95", "p99", "p99.9", "max", "std", "tail", "flatness")
    rows = [f"{'stage (ms)':<40}" + "".join(f"{c:>9}" for c in cols)]
    sections = [report["stages"], report.get("compute", {})]
    for section in sections:
        for name, s in section.items():
            if s.get("count"):
                rows.append(f"{name:<40}" + "".join(f"{s[c]:>9.2f}" for c in cols))
    rows.append(f"frames measured {report['frames_measured']} of {report['frames_total']} (first/last {report['skipped_each_end']} skipped)")
    if "pipeline_overhead_ms" in report:
        o = report["pipeline_overhead_ms"]
        rows.append(f"pipeline overhead (end to end - model): p50 {o['p50']:.2f} ms, p99 {o['p99']:.2f} ms")
    return "\n".join(rows)


def plot_cdf(stamps: Sequence[Mapping[str, int]], path: Path, *, skip: int = 10, title: str = "") -> None:
    """CDF of each stage's latency on one log-x axis: tails are what matter at a bedside."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kept = trim(stamps, skip)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, (a, b) in STAGES.items():
        v = np.sort([(s[b] - s[a]) / 1e6 for s in kept])
        if v.size:
            ax.step(np.maximum(v, 1e-3), np.arange(1, v.size + 1) / v.size, where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of frames")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"bonestream latency CDF ({len(kept)} frames)", fontsize=10)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_latency_report(report: Mapping[str, Any], stamps: Sequence[Mapping[str, int]], out_dir: Path, *, skip: int = 10, title: str = "") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "latency.json", out_dir / "latency_cdf.png"
    write_json_atomic(json_path, report)
    plot_cdf(stamps, png_path, skip=skip, title=title)
    return json_path, png_path
