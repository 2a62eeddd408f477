"""The issue's targets, checked against a benchmark's rows (GPU figures are for an H100 at 224x224, stride 8)."""

from __future__ import annotations

from typing import Any

EQUAL_LABELS = 0.99  # label agreement with torch fp32 for a speed-up to count


def _target(name: str, wanted: str, measured: float | None, met: bool, unit: str = "") -> dict[str, Any]:
    shown = "not measured" if measured is None else f"{measured:.2f}{unit}"
    return {"target": name, "wanted": wanted, "measured": shown, "met": bool(measured is not None and met)}


def _host_work(doc: dict[str, Any], limit_ms: float) -> dict[str, Any]:
    """Everything per frame but model + labels (prepare, transfers, mask + overlay, encode, publish), batch 1, best row."""
    p50 = min((s["p50"] for s in doc.get("host_work_ms", {}).values()), default=None)
    h, w = doc["meta"]["geometry"]["frame_size"]
    return _target(f"host work per {w}x{h} frame other than model + labels, p50", f"<= {limit_ms:g} ms", p50, p50 is not None and p50 <= limit_ms, " ms")


def check_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [r for r in doc["runs"] if (r["label_agreement"] or 0) >= EQUAL_LABELS]
    single = [r for r in rows if r["batch"] == 1]
    if doc["meta"]["device"]["type"] == "cpu":
        others = [r for r in single if (r["backend"], r["precision"]) != ("torch", "fp32")]
        best = max((r["speedup_vs_torch_fp32"] for r in others), default=None)
        return [
            _target("best CPU backend vs torch eager fp32, batch 1, equal labels", ">= 1.3x", best, best is not None and best >= 1.3, "x"),
            _host_work(doc, 8.0),
        ]
    model_p99 = min((r["stages_ms"]["model_labelling"]["p99"] for r in single), default=None)
    e2e_p99 = min((r["stages_ms"]["end_to_end"]["p99"] for r in single), default=None)
    fps = max((r["throughput_fps"] for r in rows), default=None)
    streams = doc.get("streams")
    stream_p99 = streams["latency_ms"]["p99"] if streams else None
    return [
        _target("model + labelling p99, batch 1", "<= 1 ms", model_p99, model_p99 is not None and model_p99 <= 1.0, " ms"),
        _host_work(doc, 1.0),
        _target("end to end p99, batch 1", "<= 3 ms", e2e_p99, e2e_p99 is not None and e2e_p99 <= 3.0, " ms"),
        _target("throughput, batched, equal labels", ">= 2000 frames/s", fps, fps is not None and fps >= 2000, " fps"),
        _target(
            f"{streams['streams'] if streams else 16} streams x {streams['fps'] if streams else 30:g} fps, p99", "<= 33 ms",
            stream_p99, bool(streams) and stream_p99 <= 33.0, " ms",
        ),
    ]


def check_multistream_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stream count measured: every stream's p99 within one frame period and nothing dropped; and the issue's
    GPU target (32 streams x 30 fps on an H100, every stream's p99 <= 33 ms), "not measured here" elsewhere."""
    where = doc["meta"]["device"].get("gpu") or doc["meta"]["device"]["cpu"]
    rows = []
    for r in doc["rows"]:
        worst, budget = r["worst_p99_ms"], r["budget_ms"]
        ok = worst is not None and worst <= budget and r["dropped"] == 0
        rows.append(_target(f"{r['streams']} streams x {r['fps']:g} fps on {where}, every stream's p99, no drops", f"<= {budget:g} ms", worst, ok, " ms"))
    h100 = "H100" in str(doc["meta"]["device"].get("gpu", ""))
    target = next((r for r in doc["rows"] if h100 and r["streams"] >= 32 and r["fps"] >= 30), None)
    worst = target["worst_p99_ms"] if target else None
    row = _target("32 streams x 30 fps on an H100, every stream's p99", "<= 33 ms", worst, worst is not None and worst <= 33.0, " ms")
    if target is None:
        row["measured"] = "not measured here"
    return rows + [row]
