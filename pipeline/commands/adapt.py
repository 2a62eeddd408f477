"""bonestream adapt SOURCE... --out adapted.pth: DINO self-distillation of the ViT-S/8 on unlabeled recordings.

The student learns to match, on a frame up to --view-gap frames away, what the EMA teacher sees on a frame
(VET-DINO's multi-view pairs on DINO's recipe, see models/adapt). The teacher's backbone is written in the official
layout, so every command takes it with --weights adapted.pth; adapted.json says how it was made.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import BonestreamError
from pipeline.commands.common import announce_weights
from pipeline.commands.numbers import COUNT, POSITIVE_INT, SIDE, number
from pipeline.commands.paths import check_output_file

if TYPE_CHECKING:
    from models.adapt.train import AdaptSettings

CHECKPOINT_SUFFIXES = (".pth", ".pt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="recordings: videos, DICOM cine, image folders (one recording each)")
    p.add_argument("--out", required=True, help="adapted backbone (.pth); beside it NAME.json, NAME.state.pth, NAME-loss.png")
    p.add_argument("--init", default="official", metavar="SPEC",
                   help="starting weights: official (default), random[:SEED] (plumbing only), or a checkpoint PATH")
    p.add_argument("--epochs", type=POSITIVE_INT, default=10, help="passes over the frames, one sample per frame each (default 10)")
    p.add_argument("--max-steps", type=POSITIVE_INT, default=None, help="stop the schedules' run after this many steps")
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=32, help="frame pairs per step (default 32)")
    p.add_argument("--lr", type=number(float, 0, 1, above=True), default=None, help="peak learning rate (default 0.0005 x batch / 256, DINO's)")
    p.add_argument("--view-gap", type=COUNT, default=4, help="student frame at most this many frames from the teacher's; 0: plain DINO (default 4)")
    p.add_argument("--global-size", type=SIDE, default=224, help="global crop side (default 224)")
    p.add_argument("--local-size", type=SIDE, default=96, help="local crop side (default 96)")
    p.add_argument("--local-crops", type=number(int, 0, 64), default=6, help="local crops per sample (default 6)")
    p.add_argument("--out-dim", type=number(int, 2, 262144), default=65536, help="DINO head prototypes (default 65536)")
    p.add_argument("--max-side", type=SIDE, default=384, help="frames are held with their long side at most this (default 384)")
    p.add_argument("--roi", default="auto", help="imaging area per recording: auto, full, or top,left,height,width (default auto)")
    p.add_argument("--save-every", type=POSITIVE_INT, default=100, help="training state saved every N steps (default 100)")
    p.add_argument("--seed", type=COUNT, default=0, help="seed of the head, frame pairs, crops and augmentation (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from NAME.state.pth with its settings and sources")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run's files")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:1 (default cuda when there is one, else cpu); CUDA adds autocast and torch.compile")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def outputs(out: Path) -> dict[str, Path]:
    return {"checkpoint": out, "sidecar": out.with_suffix(".json"), "state": out.with_name(out.stem + ".state.pth"),
            "loss_curve": out.with_name(out.stem + "-loss.png")}


def check_outputs(paths: dict[str, Path], resume: bool, overwrite: bool) -> None:
    out = paths["checkpoint"]
    if out.suffix not in CHECKPOINT_SUFFIXES:
        raise BonestreamError(f"--out {out}: name a checkpoint file ending in {' or '.join(CHECKPOINT_SUFFIXES)}")
    for path in paths.values():
        check_output_file(path, "--out")
    if resume and not paths["state"].is_file():
        raise BonestreamError(f"--resume: {paths['state']} not found; nothing to resume")
    found = [p for p in paths.values() if p.exists()]
    if found and not (resume or overwrite):
        raise BonestreamError(f"--out {out}: {found[0]} exists from a previous run; pass --resume to continue it or --overwrite")


def settings_from(args: argparse.Namespace, frames: int) -> tuple[AdaptSettings, int]:
    """The run's settings and steps per epoch. Schedules follow DINO's proportions of a 100-epoch run: 10 % warm-up,
    teacher temperature warm-up over 30 %, last layer frozen for the first epoch."""
    from models.adapt.crops import CropSettings
    from models.adapt.head import HeadSettings
    from models.adapt.train import AdaptSettings

    per_epoch = math.ceil(frames / args.batch_size)
    steps = min(args.epochs * per_epoch, args.max_steps or math.inf)
    crops = CropSettings(global_size=args.global_size, local_size=args.local_size, local_crops=args.local_crops)
    return AdaptSettings(
        steps=steps, batch_size=args.batch_size, lr=args.lr or 0.0005 * args.batch_size / 256,
        warmup_steps=round(0.1 * steps), teacher_temp_warmup_steps=round(0.3 * steps),
        freeze_last_layer_steps=min(per_epoch, steps), view_gap=args.view_gap, seed=args.seed,
        head=HeadSettings(out_dim=args.out_dim), crops=crops,
    ), per_epoch


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from benchmarks.report import device_info
    from models.adapt.checkpoint import RANDOM_INIT_STAMP, load_state, plot_losses, save_backbone, save_state
    from models.adapt.train import Adapter, AdaptSettings
    from models.adapt.views import make_batch
    from models.placement import usable
    from models.weights import WeightsIdentity, resolve_weights
    from pipeline.capture.recordings import hold_recordings
    from pipeline.memory import AdaptSize, check_adapt
    from pipeline.publish.files import write_json_atomic

    paths = outputs(Path(args.out))
    check_outputs(paths, args.resume, args.overwrite)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    usable(device)
    if not args.resume:  # a resumed run's settings are its own: checked once read
        check_adapt(AdaptSize(args.batch_size, args.global_size, args.local_size, args.local_crops, args.out_dim), device)
    held = hold_recordings(args.sources, roi=args.roi, max_side=args.max_side, progress=args.progress)
    sources = [h.record for h in held]
    recordings = [h.recording for h in held]
    frames = sum(len(r.frames) for r in recordings)
    if args.resume:
        state = load_state(paths["state"])
        if [s["sha256"] for s in state["sources"]] != [s["sha256"] for s in sources]:
            raise BonestreamError(f"--resume: the sources differ from those {paths['state']} was trained on "
                                  f"({', '.join(s['source'] for s in state['sources'])})")
        settings, per_epoch = AdaptSettings.from_dict(state["settings"]), int(state["steps_per_epoch"])
        c = settings.crops
        check_adapt(AdaptSize(settings.batch_size, c.global_size, c.local_size, c.local_crops, settings.head.out_dim), device)
        identity = WeightsIdentity.from_dict(state["init"])
        backbone = {k.removeprefix("backbone."): v for k, v in state["adapter"]["student"].items() if k.startswith("backbone.")}
        losses, wall_s = list(state["losses"]), float(state["wall_s"])
    else:
        state = None
        settings, per_epoch = settings_from(args, frames)
        backbone, identity = resolve_weights(args.init, progress=args.progress)
        losses, wall_s = [], 0.0
    announce_weights(f"init {identity.label}")
    adapter = Adapter(backbone, settings, device)
    if state is not None:
        adapter.load_state_dict(state["adapter"])
        print(f"resuming {paths['state']} at step {adapter.step} of {settings.steps}")
    print(f"adapt: {len(recordings)} recording(s), {frames} frames, {settings.steps} steps ({per_epoch} per epoch), "
          f"batch {settings.batch_size}, crops 2x{settings.crops.global_size} + {settings.crops.local_crops}x{settings.crops.local_size}, "
          f"view gap {settings.view_gap}, device {adapter.device}")

    def save(elapsed: float) -> None:
        save_state(paths["state"], {"adapter": adapter.state_dict(), "settings": settings.to_dict(), "steps_per_epoch": per_epoch,
                                    "init": identity.to_dict(), "sources": sources, "losses": losses, "wall_s": elapsed})

    start = time.perf_counter()
    with tqdm(total=settings.steps, initial=adapter.step, desc="adapt", unit="step", disable=not args.progress) as bar:
        try:
            while adapter.step < settings.steps:
                batch = make_batch(recordings, settings.batch_size, settings.crops, settings.view_gap, settings.seed, adapter.step)
                losses.append(adapter.train_step(batch))
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if adapter.step % args.save_every == 0 and adapter.step < settings.steps:
                    save(wall_s + time.perf_counter() - start)
        except KeyboardInterrupt:
            save(wall_s + time.perf_counter() - start)
            print(f"\ninterrupted at step {adapter.step}: state saved to {paths['state']}; continue with --resume")
            raise
    wall_s += time.perf_counter() - start
    save(wall_s)
    sha = save_backbone(paths["checkpoint"], adapter.teacher_backbone())
    stamp = RANDOM_INIT_STAMP if identity.is_random else None
    title = f"bonestream adapt: {settings.steps} steps from {identity.label[:20]}, {adapter.device}"
    plot_losses(paths["loss_curve"], losses, title, stamp, settings.head.out_dim)
    window = max(1, len(losses) // 20)
    summary = {
        "checkpoint": paths["checkpoint"].name, "sha256": sha, "weights": f"sha256:{sha}",
        "load_with": f"--weights {paths['checkpoint']}",
        "init": identity.to_dict(), "random_weights": identity.is_random,
        "note": RANDOM_INIT_STAMP + ": its features and any Dice made with it say nothing about bone" if identity.is_random else None,
        "sources": sources, "steps": adapter.step, "steps_per_epoch": per_epoch, "epochs": adapter.step / per_epoch,
        "loss_first": sum(losses[:window]) / window, "loss_last": sum(losses[-window:]) / window, "loss_window": window,
        "losses": losses, "settings": settings.to_dict(), "device": device_info(str(adapter.device)),
        "precision": str(adapter.amp_dtype).removeprefix("torch.") if adapter.amp_dtype else "fp32",
        "compiled": adapter.device.type == "cuda", "torch": torch.__version__, "wall_s": round(wall_s, 2),
        "files": {k: p.name for k, p in paths.items()},
    }
    summary["collapsed"] = collapsed(losses[-window:], settings.head.out_dim)
    write_json_atomic(paths["sidecar"], summary)
    print(f"adapted backbone -> {paths['checkpoint']} (sha256:{sha[:16]}...), {adapter.step} steps in {wall_s:.1f} s, "
          f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} (means of {window} steps)")
    print(f"  {paths['sidecar']}, {paths['loss_curve']}, resumable state {paths['state']}")
    if summary["collapsed"]:
        print(f"  ** COLLAPSED: the loss sits at ln {settings.head.out_dim} = {math.log(settings.head.out_dim):.4f}, a uniform teacher: "
              "the features carry nothing; use more frames per step (--batch-size), a lower --lr or official init **")
    if identity.is_random:
        print(f"  ** {RANDOM_INIT_STAMP} **")
    return 0


def collapsed(recent: list[float], out_dim: int, tolerance: float = 1e-3) -> bool:
    """DINO's uniform collapse: teacher and student both flat over the prototypes, so every recent loss is ln(out_dim)
    (a cross-entropy with a uniform target is at least that, and equal only when the student is uniform too)."""
    return bool(recent) and all(abs(loss - math.log(out_dim)) < tolerance for loss in recent)
