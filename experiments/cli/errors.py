"""User errors as one line: option values checked when the config is parsed, parse errors and data or
checkpoint errors reduced to `error: <option or file>: <what was expected>` (printed by `experiments.train`).
"""
from __future__ import annotations

import datetime
import difflib
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from datamodules.voc import DatasetError, voc_dir
from lightning_modules.run.checkpoints import CheckpointError, DiskFullError
from lightning_modules.run.divergence import DivergenceError
from lightning_modules.run.lock import RunInUseError
from lightning_modules.run.record import RunFileError
from lightning_modules.components.backbones import BACKBONES, OUTPUT_STRIDES


class ConfigError(ValueError):
    """An option value the run cannot use: `option` names it, the message says what was expected."""

    def __init__(self, option: str, expected: str) -> None:
        super().__init__(f"{option}: {expected}")


USER_ERRORS = (ConfigError, DatasetError, CheckpointError, DiskFullError, RunFileError, RunInUseError, DivergenceError)


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
        accepted = _accepted_values(e.removeprefix("Expected a ") for e in expected)
        if accepted:
            return f"--{key}: expected one of {', '.join(accepted)}; {given.lower()}"
        what = " or ".join(e.removeprefix("Expected a ").split(".")[0] for e in expected)
        return f"--{key}: expected {what}; {given.lower()}"
    return f"--{key}: {expected[0] if expected else lines[0] if lines else 'invalid value'}"


def _accepted_values(types: Iterable[str]) -> list[str] | None:
    """The values a union of `typing.Literal[...]` (and None) accepts, as written in a config; None if a
    member is another type (then the type names say more)."""
    values: list[str] = []
    for name in types:
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", name)
        if name == "NoneType":
            values.append("null")
        elif literal:
            values += [v.strip().strip("'\"") for v in literal.group(1).split(",")]
        else:
            return None
    return list(dict.fromkeys(values))


class UnknownKeyError(ConfigError):
    """A key no option of the subcommand has; `key` is its dotted name (located in a config file later)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__("command line", message)
        self.key, self.message = key, message


class ConfigSyntaxError(ConfigError):
    """A config file that is not YAML (located and explained by `locate_in_config_files`)."""


class OneLineErrorParser(LightningArgumentParser):
    """Parse errors raise ConfigError (printed as one line by `main`) instead of usage + message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's internal parsers retry on errors
            super().error(message, ex)
        if message.startswith("Problems parsing config"):
            raise ConfigSyntaxError("config file", message.splitlines()[0])
        reduced = _parser_message(message)
        unknown = re.search(r"does not accept option '([^']+)'", message) or re.match(
            r"unrecognized arguments: --([\w.]+)", reduced)
        if unknown:
            raise UnknownKeyError(unknown.group(1), reduced)
        option, _, expected = reduced.partition(": ")
        raise ConfigError(option, expected) if expected else ConfigError("command line", option)


def config_files(args: Sequence[str]) -> list[Path]:
    """The `--config` files of a command line, in the order they are read."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def dotted_items(tree, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": value} for every key of a parsed YAML tree, nested or written with dots."""
    if not isinstance(tree, dict):
        return {}
    items: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        items[name] = value
        items.update(dotted_items(value, name + "."))
    return items


def locate_in_config_files(error: ConfigError, files: Sequence[Path], valid_keys: Iterable[str]) -> ConfigError:
    """The same error, naming the config file it comes from: for YAML that does not parse, the file, line
    and column; for an unknown key, the file and the closest valid key (`difflib`). Unchanged if no file
    holds it (a command-line mistake gets the closest key too)."""
    if isinstance(error, ConfigSyntaxError):
        for path in files:
            try:
                yaml.safe_load(path.read_text())
            except OSError:
                continue
            except yaml.MarkedYAMLError as e:
                mark = e.problem_mark or e.context_mark
                context = f" ({e.context}, line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
                return ConfigError(str(path), f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: "
                                              f"{e.problem}{context}")
        return error
    if not isinstance(error, UnknownKeyError):
        return error
    if ".init_args." not in error.key:  # written the short way (--data.batch_size): suggest it that way
        valid_keys = {key.replace(".init_args.", ".") for key in valid_keys}
    closest = difflib.get_close_matches(error.key, list(valid_keys), n=1, cutoff=0.6)
    hint = f"; did you mean {closest[0]}?" if closest else ""
    for path in reversed(files):  # the last file that sets it is the one the parser complained about
        try:
            keys = dotted_items(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        if error.key in keys:
            return ConfigError(str(path), f"unknown key {error.key}{hint or ' (no option is close to it)'}")
    option, _, expected = error.message.partition(": ")
    return ConfigError(option, f"{expected}{hint.replace('mean ', 'mean --')}") if expected else error


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
    check_tiling("--model.eval_tile_size", model.get("eval_tile_size"), "--model.eval_tile_overlap",
                 model.get("eval_tile_overlap", 0.0), eval_stride or net.output_stride)
    check_loss_switches(model)
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


def check_tiling(size_option: str, size: int | None, overlap_option: str, overlap: float, output_stride: int) -> None:
    """Sliding-window settings (`--model.eval_tile_size/overlap`, predict's `--tile_size/overlap`)."""
    _check(size is None or size >= output_stride, size_option,
           f"expected a window of at least the output stride ({output_stride} px), got {size}")
    _check(0 <= overlap < 1, overlap_option, f"expected 0 <= overlap < 1 (a fraction of the window), got {overlap}")


def check_loss_switches(model) -> None:
    """The official loss switches; the length of a `label_weights` list is checked against the data's class
    count in `experiments.cli.checks.check_network`."""
    p = model.get("top_k_percent_pixels", 1.0)
    _check(0 < p <= 1, "--model.top_k_percent_pixels", f"expected 0 < p <= 1 (1 = every pixel), got {p}")
    step = model.get("hard_example_mining_step", 0)
    _check(step >= 0, "--model.hard_example_mining_step", f"expected a number of steps >= 0 (0 = no ramp), got {step}")
    weights = model.get("label_weights")
    if weights is not None and weights != "median_frequency":
        _check(all(w >= 0 for w in weights) and any(w > 0 for w in weights), "--model.label_weights",
               f"expected weights >= 0, not all 0, got {list(weights)}")


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


def check_output_path(option: str, path: str | Path, directory: bool = False, suffixes: Sequence[str] = ()) -> None:
    """An output (`directory`, or a file with one of `suffixes`) that this process can create or overwrite,
    checked before any work: the nearest existing folder on its way must be a writable directory."""
    path = Path(path)
    where = f"{option} {path}"
    if suffixes and path.suffix not in suffixes:
        raise ConfigError(where, f"expected a file name ending in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir() != directory:
        raise ConfigError(where, "is a file; expected a directory (created if missing)" if directory else
                          "is a directory; expected a file name")
    folder = path if directory else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(where, f"{folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(where, f"{folder} is not writable by this user; expected a folder it can write to")
