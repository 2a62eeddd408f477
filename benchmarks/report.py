"""Benchmark results as JSON, a markdown table and PNG plots (stamped RANDOM WEIGHTS when they are) in one folder."""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.runner import HOST_STAGES, STAGE_ORDER, Run  # noqa: E402
from pipeline.infer.onnx_backend import cpu_threads  # noqa: E402
from pipeline.publish.files import write_bytes_atomic, write_figure, write_json_atomic  # noqa: E402
from pipeline.stats import summarize  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    info: dict[str, Any] = {"type": dev.type, "cpu": cpu_name(), "cpu_cores": cpu_threads(), "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), capability=f"sm_{props.major}{props.minor}")
    return info


def describe_device(info: dict[str, Any]) -> str:
    cpu = f"{info['cpu']}, {info['cpu_cores']} cores, torch threads {info['torch_threads']}"
    return f"{info['gpu']} ({info['capability']}, {info['gpu_memory_gb']} GB); host {cpu}" if info["type"] == "cuda" else cpu


def device_slug(info: dict[str, Any]) -> str:
    """``cpu-amd-epyc-2c`` or ``cuda-nvidia-h100-80gb-hbm3``: one results folder per machine kind."""
    name = info["gpu"] if info["type"] == "cuda" else f"{info['cpu']} {info['cpu_cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", f"{info['type']} {name}".lower()).strip("-")


def summarize_run(run: Run, reference: Run | None) -> dict[str, Any]:
    """Holoscan-style statistics per stage (per batch: every frame of a batch waits for all of it), throughput,
    memory, and label agreement with the reference run (torch fp32 batch 1) on the same frames."""
    stages = {stage: summarize(values) for stage, values in run.stages.items()}
    frames = len(run.stages["end_to_end"]) * run.config.batch
    agreement = None
    if reference is not None and run is not reference:
        shared = sorted(set(run.masks) & set(reference.masks))
        agreement = float(np.mean([np.mean(run.masks[i] == reference.masks[i]) for i in shared])) if shared else None
    return {
        "backend": run.config.backend,
        "precision": run.config.precision,
        "batch": run.config.batch,
        "frames": frames,
        "stages_ms": stages,
        "end_to_end_ms": list(run.stages["end_to_end"]),
        "model_ms_per_frame": stages["model_labelling"]["p50"] / run.config.batch,
        "throughput_fps": frames / run.wall_s if run.wall_s else 0.0,  # frames / wall time, batches back to back
        "memory_mb": run.memory_mb,
        "build_s": run.build_s,
        "label_agreement": 1.0 if run is reference else agreement,
        "loadavg_1min_mean": float(np.mean(run.loadavg)) if run.loadavg else None,
        "other_processes_cores_mean": float(np.mean(run.others_cores)) if run.others_cores else None,
    }


def add_ratios(rows: list[dict[str, Any]], reference_ms: float, baseline_ms: float | None) -> None:
    """Speed-up of each row's model + labelling per frame over torch eager fp32 and over the original method."""
    for row in rows:
        row["speedup_vs_torch_fp32"] = reference_ms / row["model_ms_per_frame"]
        row["speedup_vs_original"] = baseline_ms / row["model_ms_per_frame"] if baseline_ms else None


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = [
        f"# bonestream benchmark: {meta['device_slug']}",
        "",
        f"- device: {describe_device(meta['device'])}",
        f"- input: {meta['geometry']['input_size'][0]}x{meta['geometry']['input_size'][1]}, stride {meta['geometry']['stride']}, "
        f"frames from {meta['frames_source']} ({meta['frames']} per configuration after {meta['warmup']} warm-up batches)",
        f"- weights: {meta['weights']}" + (f" -- **{meta['weights_warning']}**" if meta["weights_warning"] else ""),
        f"- load average (1, 5, 15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        f"- decode (not in end to end, as in Holoscan): p50 {doc['decode_ms']['p50']:.2f} ms, p99 {doc['decode_ms']['p99']:.2f} ms per frame",
        f"- labelling alone (fp32 torch, inside the fused model stage): p50 {_fmt(doc['labelling_ms'] and doc['labelling_ms']['p50'], '.3f')} ms per frame",
        f"- memory: {', '.join(f'{k} {v:.0f}' for k, v in doc['memory'].items())}; per row below: memory in use after build "
        "and warm-up minus before (process RSS on the CPU, device memory on a GPU)",
        "",
        "Latency in ms per batch (each frame of a batch waits for the whole batch); model = model + labelling, fused. "
        "load avg: 1-minute load average during the run (includes the benchmark); others' CPU: cores used by other "
        "processes while this configuration ran. fps: frames over the wall time of the configuration's batches, back to back. x torch fp32: torch eager fp32 batch 1's model ms per frame over this "
        "row's; x original: the same for the original method (stride 4, below).",
        "",
        "| backend | precision | batch | model p50 | model p99 | end-to-end avg | p50 | p99 | p99.9 | max | fps | ms/frame | x torch fp32 | x original | labels vs torch fp32 | memory MB | load avg | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        m, e = r["stages_ms"]["model_labelling"], r["stages_ms"]["end_to_end"]
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['batch']} | {m['p50']:.2f} | {m['p99']:.2f} | {e['avg']:.2f} | {e['p50']:.2f} | "
            f"{e['p99']:.2f} | {e['p99.9']:.2f} | {e['max']:.2f} | {r['throughput_fps']:.1f} | {r['model_ms_per_frame']:.2f} | "
            f"{r['speedup_vs_torch_fp32']:.2f} | {_fmt(r['speedup_vs_original'], '.1f')} | {_fmt(r['label_agreement'] and 100 * r['label_agreement'], '.2f')}% | "
            f"{r['memory_mb']:.0f} | {_fmt(r['loadavg_1min_mean'], '.2f')} | {_fmt(r['other_processes_cores_mean'], '.2f')} |"
        )
    if doc.get("baseline"):
        b = doc["baseline"]
        lines += ["", f"Original method's cost (fp32 eager, stride 4 at {b['input_size'][0]}x{b['input_size'][1]}, grid {b['grid'][0]}x{b['grid'][1]}): "
                  f"model + labelling p50 {b['model_ms']['p50']:.1f} ms over {b['model_ms']['count']} frames."]
    lines += ["", "Per-stage p50 / p99 (ms):", "", "| configuration | " + " | ".join(STAGE_ORDER) + " |", "|---|" + "---|" * len(STAGE_ORDER)]
    for r in doc["runs"]:
        cells = [f"{r['stages_ms'][s]['p50']:.2f} / {r['stages_ms'][s]['p99']:.2f}" for s in STAGE_ORDER]
        lines.append(f"| {r['backend']} {r['precision']} b{r['batch']} | " + " | ".join(cells) + " |")
    if doc.get("streams"):
        s = doc["streams"]
        lines += ["", f"Paced streams: {s['streams']} x {s['fps']:g} fps on {s['backend']} {s['precision']} batch {s['batch']}: "
                  f"{s['frames']} frames, latency p50 {s['latency_ms']['p50']:.1f} ms, p99 {s['latency_ms']['p99']:.1f} ms, max {s['latency_ms']['max']:.1f} ms."]
    if doc.get("skipped"):
        lines += ["", "Not measured:", ""] + [f"- {s['config']}: {s['reason']}" for s in doc["skipped"]]
    if doc.get("targets"):
        lines += ["", "| target | wanted | measured | met |", "|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['wanted']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in doc["targets"]]
    return "\n".join(lines) + "\n"


def write_plots(doc: dict[str, Any], out_dir: Path, tag: str) -> list[Path]:
    """End-to-end latency distributions, per-stage p50 bars, throughput against batch size."""
    runs = doc["runs"]
    stamp = doc["meta"]["weights_warning"] and "RANDOM WEIGHTS: latency only"
    labels = [f"{r['backend']}\n{r['precision']} b{r['batch']}" for r in runs]
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(runs)), 4))
    ax.boxplot([r["end_to_end_ms"] for r in runs], whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(runs) + 1), labels, fontsize=7)
    ax.set_ylabel("end-to-end latency per batch (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{doc['meta']['device_slug']}: whiskers p1-p99")
    paths.append(_save(fig, out_dir / f"{tag}_latency.png", stamp))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(runs)), 4))
    bottom = np.zeros(len(runs))
    for stage in HOST_STAGES:  # the model dwarfs the rest on a CPU: it is named in the labels instead
        values = np.array([r["stages_ms"][stage]["p50"] for r in runs])
        ax.bar(range(len(runs)), values, bottom=bottom, label=stage)
        bottom += values
    model = [f"{label}\nmodel {r['stages_ms']['model_labelling']['p50']:.3g} ms" for label, r in zip(labels, runs)]
    ax.set_xticks(range(len(runs)), model, fontsize=7)
    ax.set_ylabel("p50 per batch (ms)")
    ax.set_title("host work around the model (every stage but model + labelling)", fontsize=9)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / f"{tag}_stages.png", stamp))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({(r["backend"], r["precision"]) for r in runs}):
        rows = sorted((r for r in runs if (r["backend"], r["precision"]) == name), key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["throughput_fps"] for r in rows], marker="o", label=" ".join(name))
    ax.set_xlabel("batch size")
    ax.set_ylabel("frames / s")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / f"{tag}_throughput.png", stamp))
    return paths


def _save(fig: plt.Figure, path: Path, stamp: str | None = None) -> Path:
    fig.tight_layout()
    write_figure(fig, path, stamp)
    plt.close(fig)
    return path


def write_results(doc: dict[str, Any], out_dir: Path, tag: str) -> list[Path]:
    json_path, md_path = out_dir / f"{tag}.json", out_dir / f"{tag}.md"
    write_json_atomic(json_path, doc)
    write_bytes_atomic(md_path, markdown(doc).encode())
    return [json_path, md_path, *write_plots(doc, out_dir, tag)]
