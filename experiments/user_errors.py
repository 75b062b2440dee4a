"""User errors as one line: option values checked when the config is parsed, parse errors and data or
checkpoint errors reduced to `error: <option or file>: <what was expected>` (printed by `experiments.train`).
"""
from __future__ import annotations

import datetime
import re
import textwrap
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from datamodules.voc import DatasetError, voc_dir
from lightning_modules.checkpointing import CheckpointError, DiskFullError
from lightning_modules.run_lock import RunInUseError
from lightning_modules.run_record import RunFileError
from lightning_modules.components.backbones import BACKBONES, OUTPUT_STRIDES


class ConfigError(ValueError):
    """An option value the run cannot use: `option` names it, the message says what was expected."""

    def __init__(self, option: str, expected: str) -> None:
        super().__init__(f"{option}: {expected}")


USER_ERRORS = (ConfigError, DatasetError, CheckpointError, DiskFullError, RunFileError, RunInUseError)


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


def check_config(config) -> None:
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
    _check(len(model.eval_scales) > 0 and all(s > 0 for s in model.eval_scales), "--model.eval_scales",
           f"expected one or more scales > 0, got {model.eval_scales}")
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
