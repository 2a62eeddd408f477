"""The offline CLI end to end on the shared UltraBones data and the phantom, with random weights.

Scores here come from random weights: they check plumbing, never bone quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from calibration.reference import Reference, ReferenceError
from models.weights import WeightsIdentity, random_state_dict
from pipeline.cli import main

SMALL = ["--short-side", "48", "--sample-interval", "2", "--no-progress"]


def test_calibrate_segment_evaluate_on_labelled_frames(ultrabones: Path, tmp_path: Path, capsys) -> None:
    images = ultrabones / "labelled" / "images"
    ref = tmp_path / "ref.json"
    assert main(["calibrate", str(images), "--out", str(ref), "--weights", "random:0", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "weights: random:0" in out and "reference" in out  # the RANDOM WEIGHTS notice: stderr, once (test_light_cli)
    doc = json.loads(ref.read_text())["payload"]
    assert len(doc["frames"]) == 8 and doc["weights"]["label"] == "random:0"

    seg_dir = tmp_path / "seg"
    assert main(["segment", str(images), "--reference", str(ref), "--out", str(seg_dir), "--weights", "random:0", "--no-progress"]) == 0
    masks = sorted((seg_dir / "masks").glob("*.png"))
    assert [m.stem for m in masks] == sorted(p.stem for p in images.glob("*.png"))
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (811, 950) and set(np.unique(mask)) <= {0, 255}
    assert len(list((seg_dir / "overlays").glob("*.png"))) == 8
    summary = json.loads((seg_dir / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["weights"]["kind"] == "random" and "RANDOM WEIGHTS" in summary["warning"]
    assert summary["timings_ms"]["model_labelling"]["count"] == 8 and "mask_overlay" in summary["timings_ms"]

    truth = ultrabones / "labelled" / "bone_region_masks"
    assert main(["evaluate", "--pred", str(seg_dir), "--truth", str(truth)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "pooled dice" in printed
    report = json.loads((seg_dir / "evaluation.json").read_text())
    assert report["n_images"] == 8 and 0.0 <= report["mean_dice"] <= 1.0


def test_reference_runs_with_its_own_weights_and_refuses_others_before_loading(ultrabones: Path, tmp_path: Path, capsys, caplog) -> None:
    """Without --weights the reference's recorded identity is used (random:3 rebuilt from its seed); a named
    random seed that differs is refused in one line before any model is made (no model, no RANDOM WEIGHTS log)."""
    images = ultrabones / "labelled" / "images"
    ref = tmp_path / "ref.json"
    main(["calibrate", str(images / "162705.png"), str(images / "163296.png"), "--out", str(ref), "--weights", "random:3", *SMALL])
    assert main(["segment", str(images / "162705.png"), "--reference", str(ref), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["weights"]["label"] == "random:3" and "RANDOM WEIGHTS" in summary["warning"]
    capsys.readouterr()
    caplog.clear()
    code = main(["segment", str(images / "162705.png"), "--reference", str(ref), "--out", str(tmp_path / "o2"), "--weights", "random:4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--weights random:4" in err and "random:3" in err
    assert not [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]  # no model was built


def test_checkpoint_file_in_official_layout(ultrabones: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "dino_deitsmall8_pretrain.pth"
    torch.save(random_state_dict(5), ckpt)
    images = ultrabones / "labelled" / "images"
    ref = tmp_path / "ref.json"
    assert main(["calibrate", str(images / "162705.png"), str(images / "163296.png"), "--out", str(ref), "--weights", str(ckpt), *SMALL]) == 0
    weights = json.loads(ref.read_text())["payload"]["weights"]
    assert weights["kind"] == "file" and weights["label"].startswith("sha256:") and weights["warning"] is None
    assert "RANDOM" not in capsys.readouterr().out
    assert main(["segment", str(images / "162705.png"), "--reference", str(ref), "--out", str(tmp_path / "o"), "--weights", str(ckpt), "--no-progress"]) == 0
    assert (tmp_path / "o" / "masks" / "162705.png").is_file()
    assert Reference.load(ref).weights_spec() == str(ckpt.resolve())  # --weights left out: the checkpoint it was made with
    ckpt.unlink()
    with pytest.raises(ReferenceError, match=f"weights file {ckpt.resolve()} .*not there; pass --weights PATH"):
        Reference.load(ref).weights_spec()


def _clip(src: Path, dst: Path, frames: int) -> None:
    """The first frames of the shared MP4, re-encoded with PyAV (a real short video file)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = 950, 812, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="gray"), format="gray")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_calibrate_and_segment(ultrabones: Path, tmp_path: Path) -> None:
    mp4 = ultrabones / "sweep_clip_frames150-889_20fps.mp4"
    ref = tmp_path / "ref.json"
    assert main(["calibrate", str(mp4), "--count", "3", "--out", str(ref), "--weights", "random:0", *SMALL]) == 0
    frames = json.loads(ref.read_text())["payload"]["frames"]
    assert frames == ["sweep_clip_frames150-889_20fps_000000", "sweep_clip_frames150-889_20fps_000370", "sweep_clip_frames150-889_20fps_000739"]
    clip = tmp_path / "clip.mp4"
    _clip(mp4, clip, 12)
    out = tmp_path / "seg"
    assert main(["segment", str(clip), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--batch-size", "4", "--no-progress"]) == 0
    assert len(list((out / "masks").glob("clip_*.png"))) == 12
    with av.open(str(out / "clip_overlay.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 12
    summary = json.loads((out / "summary.json").read_text())
    assert [f["id"] for f in summary["per_frame"]] == list(range(12))


def test_demo_runs_offline_and_scores_the_phantom(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "6", "--count", "3", "--short-side", "48", "--weights", "random:0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "mean ± std dice" in printed
    assert (out / "phantom_overlay.mp4").is_file() and (out / "reference.json").is_file()
    report = json.loads((out / "evaluation.json").read_text())
    assert report["n_images"] == 6 and "RANDOM WEIGHTS" in report["note"]


def test_demo_without_weights_says_so_in_one_line(tmp_path: Path) -> None:
    """Offline (download refused: a closed loopback port stands in for no internet), the demo runs on random weights."""
    env = {k: v for k, v in os.environ.items() if k != "BONESTREAM_WEIGHTS"}
    env |= {"BONESTREAM_CACHE": str(tmp_path / "cache"), "BONESTREAM_WEIGHTS_URL": "http://127.0.0.1:9/dino_deitsmall8_pretrain.pth"}
    args = ["demo", "--out", str(tmp_path / "d"), "--frames", "3", "--count", "2", "--short-side", "32", "--no-progress"]
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "official DINO weights unavailable" in line]
    assert len(lines) == 1 and "random:0" in lines[0]
    # the model loads twice (calibration, then the segmenter), the notice is said once, on stderr
    assert [line for line in result.stderr.splitlines() if "RANDOM WEIGHTS" in line] == [WeightsIdentity(kind="random", seed=0).warning]
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["weights"]["kind"] == "random"


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "calibrate" in result.stdout and "demo" in result.stdout
