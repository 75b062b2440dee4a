"""Train, validate and test DeepLabV3+ with one command (LightningCLI).

    python -m experiments.train fit --config experiments/configs/quickstart.yaml
    python -m experiments.train fit --config experiments/configs/resnet101_os16.yaml --ckpt_path last
    python -m experiments.train validate --config experiments/configs/resnet101_os16.yaml \
        --ckpt_path runs/resnet101_os16/.../best.ckpt --model.eval_output_stride 8 \
        --model.eval_scales '[0.5,0.75,1.0,1.25,1.5,1.75]' --model.eval_flip true

`experiments/configs/base.yaml` is always read first; a named config only says what differs.
Segment your own images with `python -m experiments.predict` (README "Use a trained model").

A user error (an option value, a data file, a checkpoint) prints one line `error: <option or file>: <what
was expected>` and exits non-zero; `--debug` (or DEEPLAB_DEBUG=1) shows the full traceback instead.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from datamodules.base import SegmentationDataModule
from datamodules.voc import DatasetError, voc_dir
from lightning_modules.checkpointing import AtomicCheckpointIO, CheckpointError, resolve_ckpt_path
from lightning_modules.components.backbones import BACKBONES, OUTPUT_STRIDES
from lightning_modules.run_record import RunRecord
from lightning_modules.segmentation import SegmentationModule

CONFIGS = Path(__file__).resolve().parent / "configs"
BASE_CONFIG = CONFIGS / "base.yaml"
PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "wandb", "timm", "torchdata")


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_metadata() -> dict:
    """What makes a run reproducible besides its config: code version, packages, command line."""
    return {
        "git_commit": git_commit(),
        "packages": {name: metadata.version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "command": " ".join(sys.argv),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


class LogConfigCallback(SaveConfigCallback):
    """Writes config.yaml to the run directory and puts the resolved config + metadata in the W&B run."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict(), **run_metadata()})


class ConfigError(ValueError):
    """An option value the run cannot use: `option` names it, the message says what was expected."""

    def __init__(self, option: str, expected: str) -> None:
        super().__init__(f"{option}: {expected}")


USER_ERRORS = (ConfigError, DatasetError, CheckpointError)


def one_line(error: BaseException) -> str:
    """The user-facing line of an error. A dataset error raised in a DataLoader worker arrives wrapped in
    the worker's traceback: its own message is the last line, after the exception's class name."""
    message = str(error).strip()
    if "Original Traceback" in message:
        message = re.sub(r"^[\w.]+: ", "", message.splitlines()[-1].strip())
    return " ".join(message.split())


def _class_path_message(message: str) -> str | None:
    """The inner error of a bad `--data.X` (the dataset layout is a class_path): jsonargparse reports it as
    the whole `data` value failing a Union; the user needs the key and what that key expected."""
    outer = re.match(r'Parser key "([^"]+)":', message)
    inner = re.search(r"Problem with given class_path '[^']+':\n(.*?)\n\s*- Expected a <class 'NoneType'>", message, re.S)
    if not (outer and inner):
        return None
    body = textwrap.dedent(inner.group(1)).strip()
    unknown = re.search(r"Option '([^']+)' is not accepted", body)
    if unknown:
        given = re.search(r"NestedArg\(key='([^']+)', val='([^']*)'\)", message)
        return f"unrecognized arguments: --{outer.group(1)}.{unknown.group(1)}" + (f"={given.group(2)}" if given else "")
    return _parser_message(re.sub(r'^Parser key "([^"]+)"', lambda m: f'Parser key "{outer.group(1)}.{m.group(1)}"', body))


def _parser_message(message: str) -> str:
    """jsonargparse's multi-line message → `--option: what was expected`."""
    nested = _class_path_message(message)
    if nested:
        return nested
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if not match:
        return message.strip().splitlines()[0]
    key, rest = match.groups()
    lines = [line.strip(" -") for line in rest.splitlines() if line.strip(" -")]
    expected = [re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", line) for line in lines if line.startswith("Expected a")]
    given = next((line for line in lines if line.startswith("Given value:")), "")
    if lines and lines[0].startswith("Does not validate") and expected:
        what = " or ".join(e.removeprefix("Expected a ").split(".")[0] for e in expected)
        return f"--{key}: expected {what}; {given.lower()}"
    return f"--{key}: {expected[0] if expected else lines[0] if lines else 'invalid value'}"


class OneLineErrorParser(LightningArgumentParser):
    """Parse errors raise ConfigError (printed as one line by `main`) instead of usage + message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's internal parsers retry on errors
            super().error(message, ex)
        option, _, expected = _parser_message(message).partition(": ")
        raise ConfigError(option, expected) if expected else ConfigError("command line", option)


def _check(condition: bool, option: str, expected: str) -> None:
    if not condition:
        raise ConfigError(option, expected)


def check_config(config, subcommand: str) -> None:
    """Option values the run cannot use, refused when the config is parsed: before a run directory, a W&B
    run or a data loader exists, and naming the option rather than failing deep inside torch."""
    model, data = config.model, config.data.init_args  # data: the dataset layout's class_path + init_args
    net = model.net.init_args if "init_args" in model.net else model.net
    _check(model.lr > 0, "--model.lr", f"expected a learning rate > 0, got {model.lr}")
    _check(model.weight_decay >= 0, "--model.weight_decay", f"expected >= 0, got {model.weight_decay}")
    _check(0 <= model.momentum < 1, "--model.momentum", f"expected 0 <= momentum < 1, got {model.momentum}")
    _check(net.backbone in BACKBONES, "--model.net.init_args.backbone",
           f"expected one of {', '.join(BACKBONES)}, got {net.backbone!r}")
    _check(net.output_stride in OUTPUT_STRIDES, "--model.net.init_args.output_stride",
           f"expected one of {', '.join(map(str, OUTPUT_STRIDES))}, got {net.output_stride}")
    eval_stride = model.get("eval_output_stride")
    _check(eval_stride is None or eval_stride in OUTPUT_STRIDES, "--model.eval_output_stride",
           f"expected one of {', '.join(map(str, OUTPUT_STRIDES))}, got {eval_stride}")
    _check(all(s > 0 for s in model.eval_scales), "--model.eval_scales", f"expected scales > 0, got {model.eval_scales}")
    _check(data.batch_size >= 1, "--data.batch_size", f"expected a batch size >= 1, got {data.batch_size}")
    _check(data.val_batch_size >= 1, "--data.val_batch_size", f"expected >= 1, got {data.val_batch_size}")
    _check(data.num_workers >= 0, "--data.num_workers", f"expected >= 0, got {data.num_workers}")
    _check(data.crop_size >= net.output_stride, "--data.crop_size",
           f"expected a crop of at least the output stride ({net.output_stride} px), got {data.crop_size}")
    _check(config.trainer.max_steps == -1 or config.trainer.max_steps >= 1, "--trainer.max_steps",
           f"expected -1 (no limit) or >= 1, got {config.trainer.max_steps}")
    is_voc = config.data.class_path.endswith(".VOCDataModule")  # the other layouts check their own trees
    _check(not is_voc or data.generate or voc_dir(data.root).is_dir(), "--data.root",
           f"expected a directory holding VOCdevkit/VOC2012, got {data.root} (data.generate: true writes the "
           "generated dataset there if it does not exist)")


def apply_checkpoint_interval(config) -> None:
    """`--checkpoint_every_n_train_steps N` / `--checkpoint_train_time_interval H:MM:SS` set the periodic
    checkpoint (`StepCheckpoint` in trainer.callbacks) without repeating the callbacks list."""
    steps, interval = config.get("checkpoint_every_n_train_steps"), config.get("checkpoint_train_time_interval")
    if steps is None and interval is None:
        return
    option = "--checkpoint_every_n_train_steps" if steps is not None else "--checkpoint_train_time_interval"
    _check(steps is None or interval is None, option, "expected only one of the two checkpoint intervals")
    targets = [c for c in config.trainer.callbacks or [] if str(c.get("class_path", "")).endswith(".StepCheckpoint")]
    _check(bool(targets), option, "expected a StepCheckpoint in trainer.callbacks (base.yaml has one)")
    if steps is not None:
        _check(steps >= 1, option, f"expected a number of steps >= 1, got {steps}")
        for target in targets:
            target.init_args.every_n_train_steps, target.init_args.train_time_interval = steps, None
    else:
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d)", interval.strip())
        _check(match is not None and interval != "0:00:00", option, f"expected H:MM:SS > 0, got {interval!r}")
        hours, minutes, seconds = map(int, match.groups())
        for target in targets:
            target.init_args.every_n_train_steps = 0
            target.init_args.train_time_interval = datetime.timedelta(hours=hours, minutes=minutes, seconds=seconds)


def gpu_run(accelerator) -> bool:
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    return name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())


class TrainCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Predicting on your own images is `experiments.predict` (files in, palette PNGs out), not a trainer loop.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The dataset is data: VOC unless `data.class_path` names another layout (FolderDataModule,
        # CityscapesDataModule), and the network's class count is the datamodule's.
        parser.set_defaults({"data": {"class_path": "datamodules.voc_datamodule.VOCDataModule"}})
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--checkpoint_every_n_train_steps", type=int | None, default=None,
                            help="Save the periodic checkpoint every N steps (sets StepCheckpoint's interval)")
        parser.add_argument("--checkpoint_train_time_interval", type=str | None, default=None,
                            help="Save the periodic checkpoint every H:MM:SS of training instead")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path != "last":  # before LightningCLI reads its hyperparameters
            config.ckpt_path = resolve_ckpt_path(ckpt_path, ".")  # a run directory → its newest checkpoint

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config(config, self.subcommand)
        apply_checkpoint_interval(config)
        logger = config.trainer.logger
        # The logger's save_dir is the run directory; Lightning's own files (SLURM checkpoints) go there too.
        if logger and not isinstance(logger, bool) and "save_dir" in logger.init_args:
            config.trainer.default_root_dir = logger.init_args.save_dir
        if config.trainer.enable_progress_bar is False and config.trainer.callbacks:
            # Lightning refuses a progress-bar callback when the bar is off (SLURM logs, ablation runs)
            config.trainer.callbacks = [c for c in config.trainer.callbacks
                                        if not str(getattr(c, "class_path", "")).endswith("ProgressBar")]
        if config.trainer.sync_batchnorm and not gpu_run(config.trainer.accelerator):
            # PyTorch's SyncBatchNorm runs only on GPUs (DDP refuses it on CPU modules)
            rank_zero_info("trainer.sync_batchnorm is GPU-only in PyTorch: off for this CPU run")
            config.trainer.sync_batchnorm = False
        if config.get("ckpt_path") == "last":
            config.ckpt_path = resolve_ckpt_path(config.ckpt_path, config.trainer.default_root_dir)
            _check(config.ckpt_path is not None or self.subcommand == "fit", "--ckpt_path",
                   f"expected a checkpoint: none in {config.trainer.default_root_dir}")

    def instantiate_trainer(self, **kwargs: Any):
        """Every checkpoint written atomically and durably; the run record beside the configured logger."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        if trainer.loggers:  # the first logger keeps naming the checkpoint directory
            ckpt_path = self._get(self.config_init, "ckpt_path") if self.subcommand == "fit" else None
            record = RunRecord(trainer.default_root_dir, resume_from=ckpt_path)
            trainer.loggers = [*trainer.loggers, record]
            trainer.callbacks.insert(0, record)  # first: it rewinds the record before anything is logged
        return trainer


def main(args: list[str] | None = None) -> TrainCLI:
    debug = "--debug" in (sys.argv if args is None else args) or os.environ.get("DEEPLAB_DEBUG", "") not in ("", "0")
    if args is None:
        sys.argv = [a for a in sys.argv if a != "--debug"]  # LightningCLI reads sys.argv itself
    else:
        args = [a for a in args if a != "--debug"]
    subcommand_kwargs = {"default_config_files": [str(BASE_CONFIG)]}
    try:
        return TrainCLI(
            SegmentationModule,
            SegmentationDataModule,
            subclass_mode_data=True,
            save_config_callback=LogConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_class=OneLineErrorParser,
            parser_kwargs={name: subcommand_kwargs for name in ("fit", "validate", "test")},
            args=args,
        )
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None


if __name__ == "__main__":
    main()
