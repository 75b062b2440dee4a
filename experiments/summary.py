"""Runs side by side, from their folders alone (no W&B, no network):

    python -m experiments.summary runs/quickstart runs/quickstart_lr01 [--stage fit] [--output summary.png]

prints one table with a column per run (the table each run printed at the end of its stage) and writes
one picture with their curves overlaid (train loss, val mIoU, learning rate against step). Runs are named
by the config values that differ between them, as a W&B group would show them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_modules.run.plots import plot_curves
from lightning_modules.run.summary import format_table, read_stage, run_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (trainer.logger save_dir)")
    parser.add_argument("--stage", choices=("fit", "validate", "test"), default=None,
                        help="which stage's results (default: each run's last: test, validate, then fit)")
    parser.add_argument("--output", default="summary.png", help="the picture of the overlaid curves")
    args = parser.parse_args(argv)
    try:
        summaries = [read_stage(Path(d), args.stage) for d in args.run_dirs]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    labels = run_labels(summaries)
    print(format_table(summaries, labels))
    if any(s.curves for s in summaries):
        print(f"curves: {plot_curves(summaries, labels, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
