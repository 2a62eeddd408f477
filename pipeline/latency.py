"""Per-frame stage timestamps -> a latency report in Holoscan's format (JSON) and its CDF (PNG).

Holoscan's release benchmarks skip the first and last 10 frames and report avg, percentiles up to p99.9,
max, std, tail (p95 to max) and flatness (p10 to p90) per stage and end to end; so do we.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.publish.files import write_bytes_atomic, write_json_atomic
from pipeline.stats import summarize

# Consecutive timestamps each frame carries, in pipeline order; a stage is the span between two of them.
MARKS = ("captured", "inferred", "labelled", "published")
STAGES = {
    "frame path (capture -> labels, mask, overlay)": ("captured", "inferred"),
    "encode (JPEG, message)": ("inferred", "labelled"),
    "publish (output queue, send)": ("labelled", "published"),
    "end to end (captured -> published)": ("captured", "published"),
}


class LatencyLog:
    """Per published frame, in order: its MARKS (monotonic ns) and the model's compute time (ms).

    Kept in growable arrays, 36 bytes a frame (a dict per frame took ~390, which a soak showed as steady RSS
    growth): a 12-hour bedside run at 30 fps keeps ~47 MB. Written by one thread only (the first output's worker)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._marks = np.zeros((capacity, len(MARKS)), np.int64)
        self._model = np.zeros(capacity, np.float32)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, stamps: Mapping[str, int], model_ms: float) -> None:
        if self.count == len(self._model):
            self._marks = np.concatenate([self._marks, np.zeros_like(self._marks)])
            self._model = np.concatenate([self._model, np.zeros_like(self._model)])
        self._marks[self.count] = [stamps[m] for m in MARKS]
        self._model[self.count] = model_ms
        self.count += 1

    def kept(self, skip: int) -> slice:
        """The frames measured: ``skip`` left out at each end (warm-up and drain), unless too few would remain."""
        return slice(skip, self.count - skip) if self.count > 2 * skip else slice(0, self.count)

    def span_ms(self, start: str, end: str, skip: int) -> np.ndarray:
        marks = self._marks[self.kept(skip)]
        return (marks[:, MARKS.index(end)] - marks[:, MARKS.index(start)]) / 1e6

    def recent_ms(self, start: str, end: str, n: int) -> np.ndarray:
        """The span of the last ``n`` frames, safe to read from another thread while frames are added (a live status
        line): rows are written before the count grows, and a grown array holds the old rows."""
        count, marks = self.count, self._marks
        rows = marks[max(0, count - n) : count]
        return (rows[:, MARKS.index(end)] - rows[:, MARKS.index(start)]) / 1e6

    def model_ms(self, skip: int) -> np.ndarray:
        return self._model[self.kept(skip)].astype(np.float64)


def latency_report(log: LatencyLog, *, skip: int = 10, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Holoscan-style statistics per stage, plus the model's compute time (the stage spans also include queue
    waits) and the pipeline overhead: end to end minus the model, frame by frame."""
    stages = {name: summarize(log.span_ms(a, b, skip)) for name, (a, b) in STAGES.items()}
    measured = log.kept(skip)
    report: dict[str, Any] = {
        "format": "holoscan-style latency report (ms)",
        "frames_measured": measured.stop - measured.start,
        "frames_total": len(log),
        "skipped_each_end": measured.start,
        "stages": stages,
        "compute": {"model": summarize(log.model_ms(skip))},
    }
    if len(log):
        overhead = summarize(log.span_ms("captured", "published", skip) - log.model_ms(skip))
        report["pipeline_overhead_ms"] = {"p50": overhead["p50"], "p99": overhead["p99"]}
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


def plot_cdf(log: LatencyLog, path: Path, *, skip: int = 10, title: str = "") -> None:
    """CDF of each stage's latency on one log-x axis: tails are what matter at a bedside."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = log.kept(skip)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, (a, b) in STAGES.items():
        v = np.sort(log.span_ms(a, b, skip))
        if v.size:
            ax.step(np.maximum(v, 1e-3), np.arange(1, v.size + 1) / v.size, where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of frames")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run that published nothing has no curve to name
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"bonestream latency CDF ({measured.stop - measured.start} frames)", fontsize=10)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_latency_report(report: Mapping[str, Any], log: LatencyLog, out_dir: Path, *, skip: int = 10, title: str = "") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "latency.json", out_dir / "latency_cdf.png"
    write_json_atomic(json_path, report)
    plot_cdf(log, png_path, skip=skip, title=title)
    return json_path, png_path
