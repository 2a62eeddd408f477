"""``bonestream`` command line: one module per subcommand under pipeline/commands, imported on use."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from models.errors import BonestreamError

# name -> one-line help; pipeline.commands.<name> provides add_arguments(parser) and run(args) -> int
COMMANDS = {
    "calibrate": "fit centroids and bone votes on reference frames, write a reference file",
    "segment": "label every frame of images, folders or videos: masks, overlays, summary.json",
    "evaluate": "Dice and IoU of predicted masks against ground truth masks (and surface distances for surface truth)",
    "experiment": "the study's experiments (reference-set sizes, cross-domain pairs, additive noise) with Dice/IoU",
    "demo": "calibrate on the bundled synthetic phantom and write an overlay video (works offline)",
    "run": "stream: capture -> keys -> labels -> overlays published over ZeroMQ, with a latency report",
    "view": "watch a published stream: newest overlay with fps, latency and loss counters",
    "record": "record a published stream: overlay MP4, mask PNGs and every header",
    "keys": "create a CURVE key pair for encrypted streams",
    "export": "build inference engines ahead of time, each checked against fp32 torch on the calibration frames",
    "bench": "latency and throughput of backends x precisions x batch sizes side by side, with plots",
    "analyze": "the study's feature analyses: facet PCA images, CLS attention maps, truth scatter, contact sheets",
    "archive": "segment every recording in folders of exams on Ray workers, resumably (manifest of what is done)",
    "adapt": "adapt the ViT-S/8 to your scanner: DINO self-distillation on unlabeled recordings, official-layout checkpoint",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonestream", description="Zero-shot bone overlay for B-mode ultrasound (DINO ViT-S/8).")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(module=f"pipeline.commands.{name}")
        importlib.import_module(f"pipeline.commands.{name}").add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args.module).run(args) or 0)
    except BonestreamError as exc:
        if args.debug:
            raise
        print(f"bonestream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that is full or read-only, a file that vanished: the file named, no traceback
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bonestream {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bonestream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
