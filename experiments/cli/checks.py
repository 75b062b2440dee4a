"""What a run asks for, checked before a run directory or a W&B run exists: the training split and the batch
it must fill, an explicit class count the data contradicts, a checkpoint trained as another network,
ImageNet weights this machine cannot get. Each is one line (`ConfigError`, `DatasetError`,
`CheckpointError`, printed by `experiments.train`)."""
from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment

from datamodules.base import SegmentationDataModule
from datamodules.voc import DatasetError
from experiments.cli.errors import ConfigError, dotted_items
from lightning_modules.run.checkpoints import CheckpointError, checkpoints
from lightning_modules.run.record import METRICS_FILE, RESULTS_FILE
from lightning_modules.run.settings import checkpoint_settings, differences, run_settings
from lightning_modules.run.wandb_logger import RUN_ID_FILE
from lightning_modules.components.backbones import fetch_weights
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


#: what a run leaves in its directory besides checkpoints: records a fresh run would splice into its own
RUN_FILES = (METRICS_FILE, RESULTS_FILE, RUN_ID_FILE)


def check_fresh_run_dir(run_dir: str | Path) -> None:
    """A fresh `fit` (no `--ckpt_path`) needs a directory without another run's checkpoints or records: it
    would reuse that run's W&B id, checkpoints and metrics.jsonl, and a later `--ckpt_path last` could resume
    the other run. A SLURM requeue resumes its own `hpc_ckpt_*.ckpt` by itself (Lightning), and is let through."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    ckpts = checkpoints(run_dir) if run_dir.is_dir() else []
    if SLURMEnvironment.detect() and any(p.name.startswith("hpc_ckpt_") for p in ckpts):
        return
    if ckpts:
        found.insert(0, f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''}")
    if found:
        raise ConfigError("--trainer.logger.init_args.save_dir",
                          f"{run_dir} holds another run ({', '.join(found)}); expected a new or empty folder for "
                          "a fresh fit: resume that run with --ckpt_path last, or choose another folder")


def resume_differences(config, ckpt_path: str) -> dict[str, tuple]:
    """{setting: (checkpoint's, config's)} where resuming `ckpt_path` with this `fit` config would change the
    run. With `--resume_changes refuse` (the default) a difference is a ConfigError listing each one."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    differ = differences(checkpoint_settings(checkpoint), run_settings(config.as_dict()))
    if differ and config.get("resume_changes", "refuse") != "apply":
        listed = "; ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
        raise ConfigError("--ckpt_path", f"{ckpt_path}: this resume changes the run: {listed}; expected the "
                                         "settings the checkpoint was trained with (its run's config.yaml), or "
                                         f"--resume_changes apply to change them from step "
                                         f"{checkpoint.get('global_step')} on")
    return differ
