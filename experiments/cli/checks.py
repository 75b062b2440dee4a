"""Everything checked before anything is created (a run directory, a W&B run, a data loader, an output):
option values (`check_config`), the periodic-checkpoint flags (`apply_checkpoint_interval`), output paths
(`check_output_path`), the training split and the batch it must fill, an explicit class count the data
contradicts, a checkpoint trained as another network, ImageNet weights this machine cannot get. Each is one line (`ConfigError`, `DatasetError`,
`CheckpointError`, printed by `experiments.train`)."""
from __future__ import annotations

import datetime
import importlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from datamodules.base import SegmentationDataModule
from datamodules.voc import DatasetError, voc_dir
from experiments.cli.errors import ConfigError, dotted_items
from lightning_modules.run.checkpoints import CheckpointError
from lightning_modules.components.backbones import BACKBONES, OUTPUT_STRIDES, fetch_weights
from lightning_modules.pretrained import mismatched_settings, read_net_config

NUM_CLASSES_KEYS = ("model.net.init_args.num_classes", "model.net.num_classes")


def explicit_num_classes(args: Sequence[str], files: Sequence[Path]) -> tuple[str, str] | None:
    """(value, where) of a `num_classes` the user set: the CLI links it to the data, which overrides it,
    so jsonargparse drops the value silently. The command line wins over the config files."""
    for i, arg in enumerate(args):
        key, eq, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and key in NUM_CLASSES_KEYS:
            return (value if eq else args[i + 1] if i + 1 < len(args) else ""), f"--{key}"
    for path in reversed(files):
        try:
            items = dotted_items(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        for key in NUM_CLASSES_KEYS:
            if key in items:
                return str(items[key]), f"{path} ({key})"
    return None


def datamodule(data) -> SegmentationDataModule:
    """The configured dataset layout, built from its config (construction reads nothing but a class list)."""
    module, name = data.class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**data.init_args.as_dict())


def check_training_split(config, data: SegmentationDataModule) -> None:
    """The training split lists existing files (DatasetError naming what is missing) and holds at least one
    global batch. A dataset `data.generate` will write is checked once written; the per-process share of
    the batch is checked by the loader, which knows the number of processes."""
    hp = config.data.init_args
    try:
        samples = data.list_samples(data.hparams.train_split)
    except DatasetError:
        if hp.get("generate"):
            return  # `prepare_data` writes the dataset, or refuses a folder that holds something else
        raise
    if hp.batch_size > len(samples):
        raise ConfigError("--data.batch_size", f"expected at most {len(samples)}, the samples of "
                                               f"{data.hparams.train_split}; got {hp.batch_size}")


def _settings(values: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def check_checkpoint_fits(option: str, path: str, wanted: dict, keys: tuple[str, ...] | None = None,
                          expected: str = "expected the config the checkpoint was trained with (its run's "
                                          "config.yaml), or --model.init_from to fine-tune this network from it") -> None:
    """CheckpointError putting the checkpoint's `net_config` beside the config's where a setting that shapes
    the network's tensors differs (the state dict could not load)."""
    saved = read_net_config(path)
    if saved is None:  # a plain state dict: nothing recorded to compare
        return
    differ = mismatched_settings(saved, wanted, keys)
    if differ:
        raise CheckpointError(f"{path} ({option}): another network than the config's: checkpoint "
                              f"{_settings({k: a for k, (a, _) in differ.items()})}; config "
                              f"{_settings({k: b for k, (_, b) in differ.items()})}; {expected}")


def check_network(config, explicit: tuple[str, str] | None, classes: int) -> None:
    """Everything about the network that would otherwise fail (or silently differ) after the run started;
    `classes`: the dataset's class count, which the network's is linked to."""
    net = {**(config.model.net.init_args if "init_args" in config.model.net else config.model.net).as_dict(),
           "num_classes": classes}
    if explicit is not None:
        value, where = explicit
        if not re.fullmatch(r"\d+", value) or int(value) != classes:
            raise ConfigError(where, f"num_classes {value} was given but the dataset ({config.data.class_path}, "
                                     f"{config.data.init_args.root}) has {classes} classes; the class count comes "
                                     "from the data: drop this setting")
    if config.get("ckpt_path") and Path(config.ckpt_path).is_file():  # not Lightning's "best", "hpc"
        check_checkpoint_fits("--ckpt_path", config.ckpt_path, net)
    init_from = config.model.get("init_from")
    if init_from:
        if not Path(init_from).is_file():
            raise ConfigError("--model.init_from", f"no such checkpoint file {init_from}")
        # only the backbone is fatal: another class count or head keeps those tensors freshly initialised
        check_checkpoint_fits("--model.init_from", init_from, net, keys=("backbone",),
                              expected="expected a checkpoint of the same backbone")


def check_weights(config) -> None:
    """Named ImageNet weights are fetched now, after the data check and before anything is created."""
    net = config.model.net.init_args if "init_args" in config.model.net else config.model.net
    try:
        fetch_weights(net.backbone, net.weights)
    except ValueError as e:
        raise ConfigError("--model.net.init_args.weights", str(e)) from None


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
