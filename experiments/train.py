"""Train, validate and test DeepLabV3+ with one command (LightningCLI).

    python -m experiments.train fit --config experiments/configs/quickstart.yaml
    python -m experiments.train fit --config experiments/configs/resnet101_os16.yaml --ckpt_path last
    python -m experiments.train validate --config experiments/configs/resnet101_os16.yaml \
        --ckpt_path runs/resnet101_os16/.../best.ckpt --model.eval_output_stride 8 \
        --model.eval_scales '[0.5,0.75,1.0,1.25,1.5,1.75]' --model.eval_flip true

`experiments/configs/base.yaml` is always read first; a named config only says what differs.
Segment your own images with `python -m experiments.predict` (README "Use a model").

A user error (an option value, a data file, a checkpoint) prints one line `error: <option or file>: <what
was expected>` and exits non-zero; `--debug` (or DEEPLAB_DEBUG=1) shows the full traceback instead.
"""
from __future__ import annotations

import os
import signal
import sys
import warnings

from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.cli.errors import USER_ERRORS, ConfigError, one_line
from experiments.cli.training import BASE_CONFIG, CLI_KWARGS, NOT_APPLICABLE_WARNINGS, TrainCLI
from lightning_modules.run import lock as run_lock
from lightning_modules.run.preemption import STOP_STATUS, Preemption


def main(args: list[str] | None = None) -> TrainCLI:
    for message in NOT_APPLICABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    debug = "--debug" in (sys.argv if args is None else args) or os.environ.get("DEEPLAB_DEBUG", "") not in ("", "0")
    if args is None:
        sys.argv = [a for a in sys.argv if a != "--debug"]  # LightningCLI reads sys.argv itself
    else:
        args = [a for a in args if a != "--debug"]
    subcommand_kwargs = {"default_config_files": [str(BASE_CONFIG)]}
    try:
        cli = TrainCLI(**CLI_KWARGS, parser_kwargs={name: subcommand_kwargs for name in ("fit", "validate", "test")},
                       args=args)
    except SIGTERMException:  # Lightning's own handling, outside the training steps (setup, final validation)
        print("error: stopped by SIGTERM outside the training steps; resume with --ckpt_path last", file=sys.stderr)
        raise SystemExit(STOP_STATUS[signal.SIGTERM]) from None
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None
    if getattr(cli, "run_lock", None):
        run_lock.release(cli.run_lock)
    status = max((c.exit_status for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, Preemption)), default=0)
    if status:
        raise SystemExit(status)
    return cli


if __name__ == "__main__":
    main()
