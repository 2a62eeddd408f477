"""bonestream evaluate --pred DIR --truth DIR [--truth-kind auto|surface|region] [--spacing MM]"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.choices import THIN_RULE, TRUTH_KINDS
from pipeline.commands.numbers import POSITIVE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path, help="segment output folder (uses its masks/) or a folder of masks")
    p.add_argument("--truth", required=True, type=Path, help="folder of ground-truth masks, matched by file name")
    p.add_argument("--json", type=Path, default=None, help="where to write the report (default PRED/evaluation.json)")
    p.add_argument(
        "--truth-kind", choices=TRUTH_KINDS, default="auto",
        help="surface: truth masks are bone-surface curves (adds ASSD and HD95); region: bone regions (Dice/IoU only); "
        f"{THIN_RULE}",
    )
    p.add_argument("--spacing", type=POSITIVE, default=None, metavar="MM", help="pixel spacing in mm per pixel (isotropic): surface distances in mm too")


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_dirs, write_report

    report = evaluate_dirs(args.pred, args.truth, args.truth_kind, args.spacing)
    print(report.table())
    out = args.json or args.pred / "evaluation.json"
    write_report(report, out)
    print(f"wrote {out}")
    return 0
