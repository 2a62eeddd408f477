"""bonestream adapt at a tiny scale on the CPU: DINO's loss, EMA teacher and centring, VET-DINO's frame pairs, the
official-layout checkpoint (loaded strictly, calibrated on), exact resume, and the command's one-line refusals."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from calibration.calibrate import CalibrationSettings
from calibration.clustering import KMeansSettings
from models.adapt.checkpoint import load_state, save_backbone, save_state
from models.adapt.crops import CropSettings
from models.adapt.head import HeadSettings
from models.adapt.loss import DINOLoss, LossSettings, view_pairs
from models.adapt.train import Adapter, AdaptSettings
from models.adapt.views import Recording, draw_pair, make_batch
from models.loader import load_model
from models.weights import random_state_dict
from pipeline.cli import main
from pipeline.offline import GeometryOptions, calibrate_sources

TINY = AdaptSettings(
    steps=8, batch_size=2, lr=1e-4, view_gap=2, head=HeadSettings(out_dim=64, hidden_dim=64, bottleneck_dim=32),
    crops=CropSettings(global_size=32, local_size=16, local_crops=2),
)
CLI_TINY = ["--init", "random:0", "--batch-size", "2", "--global-size", "32", "--local-size", "16", "--local-crops", "1",
            "--out-dim", "64", "--no-progress"]


@pytest.fixture(scope="module")
def backbone() -> dict[str, torch.Tensor]:
    return random_state_dict(0)


@pytest.fixture(scope="module")
def recordings() -> list[Recording]:
    rng = np.random.default_rng(1)
    return [Recording(f"r{n}", rng.integers(0, 256, (n, 48, 40), dtype=np.uint8)) for n in (3, 6)]


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_loss_decreases_on_a_fixed_batch(backbone, recordings) -> None:
    # the centre frozen (momentum 1): on one batch, centring alone would drive the teacher towards uniform
    adapter = Adapter(backbone, replace(TINY, loss=LossSettings(center_momentum=1.0)))
    batch = make_batch(recordings, 2, TINY.crops, TINY.view_gap, seed=0, step=0)
    losses = [adapter.train_step(batch) for _ in range(4)]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.fixture(scope="module")
def stepped(backbone, recordings) -> tuple[Adapter, list[torch.Tensor]]:
    """An adapter after one step, and its teacher before it."""
    adapter = Adapter(backbone, TINY)
    teacher_before = params(adapter.teacher)
    assert all(torch.equal(t, s) for t, s in zip(teacher_before, params(adapter.student)))  # DINO starts them equal
    adapter.train_step(make_batch(recordings, 2, TINY.crops, TINY.view_gap, seed=0, step=0))
    return adapter, teacher_before


def test_teacher_is_the_students_moving_average_and_gets_no_gradient(stepped) -> None:
    adapter, teacher_before = stepped
    m = adapter.momentum(0)
    assert 0.996 <= m < 1
    student_after = params(adapter.student)
    assert any(not torch.equal(a, b) for a, b in zip(student_after, teacher_before))
    for t_before, t_after, s_after in zip(teacher_before, params(adapter.teacher), student_after):
        torch.testing.assert_close(t_after, m * t_before + (1 - m) * s_after, rtol=0, atol=1e-7)
    assert all(not p.requires_grad and p.grad is None for p in adapter.teacher.parameters())
    assert adapter.momentum(TINY.steps) == 1.0


def test_centering_sharpening_and_the_view_pairs() -> None:
    assert view_pairs(2, 4) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]  # a view never against itself
    torch.manual_seed(0)
    loss = DINOLoss(8, LossSettings())
    assert (loss.teacher_temp(0, 10), loss.teacher_temp(5, 10), loss.teacher_temp(10, 10)) == pytest.approx((0.04, 0.055, 0.07))
    first = torch.randn(2 * 3, 8)
    loss(torch.randn(4 * 3, 8), first, 2, 0.04)
    torch.testing.assert_close(loss.center, 0.1 * first.mean(0, keepdim=True))
    center = loss.center.clone()
    student, teacher = torch.randn(4 * 3, 8), torch.randn(2 * 3, 8)
    value = loss(student, teacher, 2, 0.05)
    torch.testing.assert_close(loss.center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True))
    q = ((teacher - center) / 0.05).softmax(-1).chunk(2)  # the old centre is used, then updated
    logp = (student / 0.1).log_softmax(-1).chunk(4)
    expected = sum(-(q[t] * logp[s]).sum(-1).mean() for t in range(2) for s in range(4) if s != t) / 6
    torch.testing.assert_close(value, expected)


def test_view_pairs_stay_within_the_gap_and_the_recording(recordings) -> None:
    rng = np.random.default_rng(0)
    pairs = [draw_pair(rng, recordings, 2) for _ in range(400)]
    assert {p.recording for p in pairs} == {0, 1}
    for p in pairs:
        n = len(recordings[p.recording].frames)
        assert 0 <= p.teacher_frame < n and 0 <= p.student_frame < n and abs(p.teacher_frame - p.student_frame) <= 2
    assert any(p.teacher_frame != p.student_frame for p in pairs)
    assert all(p.teacher_frame == p.student_frame for p in (draw_pair(rng, recordings, 0) for _ in range(50)))
    same = make_batch(recordings, 3, TINY.crops, 0, seed=5, step=1)  # gap 0: plain DINO, identical global crops
    assert torch.equal(same.teacher, same.student_global) and same.student_local.shape == (2 * 3, 3, 16, 16)
    again = make_batch(recordings, 3, TINY.crops, 0, seed=5, step=1)
    assert torch.equal(same.student_local, again.student_local)  # a step's batch is a function of (seed, step)
    moved = make_batch(recordings, 8, TINY.crops, 2, seed=5, step=1)
    differ = [p.teacher_frame != p.student_frame for p in moved.pairs]
    rows = [not torch.equal(moved.teacher[v * 8 + b], moved.student_global[v * 8 + b]) for v in range(2) for b in range(8)]
    assert any(differ) and rows == differ * 2


def test_checkpoint_loads_strictly_and_calibrates(stepped, backbone, ultrabones, tmp_path) -> None:
    adapter = stepped[0]
    path = tmp_path / "adapted.pth"
    sha = save_backbone(path, adapter.teacher_backbone())
    model, identity = load_model(str(path))
    assert identity.kind == "file" and identity.sha256 == sha
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in adapter.teacher.backbone.state_dict().items())
    assert not torch.equal(loaded["blocks.0.attn.qkv.weight"], backbone["blocks.0.attn.qkv.weight"])
    ref = calibrate_sources(
        [str(ultrabones / "labelled" / "images")], model, identity, count=3,
        geometry=GeometryOptions(input_size=(32, 40), resampling="area"),
        settings=CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=1)), progress=False,
    )
    assert ref.k == 3 and ref.weights_label == f"sha256:{sha}"


def test_resume_ends_where_an_uninterrupted_run_ends(backbone, recordings, tmp_path) -> None:
    settings = replace(TINY, steps=2, teacher_temp_warmup_steps=2)

    def advance(adapter: Adapter, until: int) -> None:
        while adapter.step < until:
            adapter.train_step(make_batch(recordings, 2, settings.crops, settings.view_gap, settings.seed, adapter.step))

    whole = Adapter(backbone, settings)
    advance(whole, 2)
    first = Adapter(backbone, settings)
    advance(first, 1)
    save_state(tmp_path / "run.state.pth", {"adapter": first.state_dict()})
    del first
    resumed = Adapter({k: torch.zeros_like(v) for k, v in backbone.items()}, settings)  # all comes from the state file
    resumed.load_state_dict(load_state(tmp_path / "run.state.pth")["adapter"])
    assert resumed.step == 1
    advance(resumed, 2)
    for a, b in zip(params(whole.student) + params(whole.teacher), params(resumed.student) + params(resumed.teacher)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.loss.center, resumed.loss.center, rtol=0, atol=1e-6)


def write_frames(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(count):
        cv2.imwrite(str(folder / f"f{i}.png"), rng.integers(20, 256, (48, 56), dtype=np.uint8))
    return folder


def test_adapt_command_writes_a_loadable_labelled_checkpoint(tmp_path, capsys) -> None:
    frames = write_frames(tmp_path / "sweep", 4)
    out = tmp_path / "adapted.pth"
    assert main(["adapt", str(frames), "--out", str(out), "--max-steps", "2", *CLI_TINY]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    model, identity = load_model(str(out))
    assert side["sha256"] == identity.sha256 and side["steps"] == 2 and len(side["losses"]) == 2
    assert side["random_weights"] is True and "RANDOM" in side["note"] and side["init"]["label"] == "random:0"
    assert side["sources"][0]["frames"] == 4 and side["settings"]["crops"]["global_size"] == 32
    assert cv2.imread(str(tmp_path / "adapted-loss.png")) is not None
    assert main(["adapt", str(frames), "--out", str(out), *CLI_TINY]) == 2  # a previous run is not overwritten
    assert "--resume" in capsys.readouterr().err
    other = write_frames(tmp_path / "other", 5)
    assert main(["adapt", str(other), "--out", str(out), "--resume", *CLI_TINY]) == 2
    assert "sources differ" in capsys.readouterr().err
    assert main(["adapt", str(frames), "--out", str(out), "--resume", *CLI_TINY]) == 0  # finished: outputs rewritten
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["sha256"] == side["sha256"] and again["losses"] == side["losses"]


@pytest.mark.parametrize("case, expected", [
    ("one-frame", "1 frame(s)"), ("json-out", "ending in .pth"), ("no-state", "nothing to resume"), ("roi", "does not fit"),
    ("device", "not a torch device"),
])
def test_bad_input_is_one_line(case, expected, tmp_path, capsys) -> None:
    frames = write_frames(tmp_path / "sweep", 1 if case == "one-frame" else 3)
    out = tmp_path / ("adapted.json" if case == "json-out" else "adapted.pth")
    extra = {"no-state": ["--resume"], "roi": ["--roi", "0,0,100,100"], "device": ["--device", "tpu9"]}.get(case, [])
    assert main(["adapt", str(frames), "--out", str(out), *CLI_TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_uniform_collapse_is_named() -> None:
    from pipeline.commands.adapt import collapsed

    assert collapsed([math.log(1024)] * 5, 1024) and not collapsed([6.5, math.log(1024)], 1024) and not collapsed([], 1024)
