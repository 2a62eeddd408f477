"""bonestream evaluate --pred DIR --truth DIR"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.evaluate import evaluate_dirs, write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path, help="segment output folder (uses its masks/) or a folder of masks")
    p.add_argument("--truth", required=True, type=Path, help="folder of ground-truth masks, matched by file name")
    p.add_argument("--json", type=Path, default=None, help="where to write the report (default PRED/evaluation.json)")


def run(args: argparse.Namespace) -> int:
    report = evaluate_dirs(args.pred, args.truth)
    print(report.table())
    out = args.json or args.pred / "evaluation.json"
    write_report(report, out)
    print(f"wrote {out}")
    return 0
