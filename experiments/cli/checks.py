"""Everything checked before anything is created (a run directory, a W&B run, a data loader, an output):
option values (`check_config`, sliding windows, loss switches), the periodic-checkpoint flags
(`apply_checkpoint_interval`), output paths (`check_output_path`), the training split and the batch it must
fill, an evaluation split with something to score, masks with a labelled pixel, an explicit class count the
data contradicts, a checkpoint trained as another network, a fresh fit into another run's folder, a resume
that would change the run, ImageNet weights this machine cannot get, a run folder it can write, shared memory
for the loader workers, W&B credentials where W&B is forced online. Each is one line (`ConfigError`, `DatasetError`,
`CheckpointError`, printed by `experiments.train`)."""
from __future__ import annotations

import datetime
import importlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment

from datamodules.base import SegmentationDataModule
from datamodules.voc import DatasetError, voc_dir
from experiments.cli.errors import ConfigError, dotted_items
from lightning_modules.run.checkpoints import CheckpointError, checkpoints, read_checkpoint
from lightning_modules.run.record import METRICS_FILE, RESULTS_FILE
from lightning_modules.run.settings import checkpoint_settings, differences, run_settings
from lightning_modules.run.wandb_logger import RUN_ID_FILE
from lightning_modules.components.backbones import BACKBONES, OUTPUT_STRIDES, fetch_weights
from lightning_modules.pretrained import mismatched_settings, read_net_config
from lightning_modules.run.wandb_logger import has_wandb_credentials

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
    check_labelled(data, samples, "--data.train_split", "nothing to learn")


def check_labelled(data: SegmentationDataModule, samples, option: str, consequence: str) -> None:
    """At least one mask of `samples` has a labelled pixel. Decoding stops at the first such mask (the
    first one, for real data): only a split whose every pixel is ignored is read through."""
    decode, ignore, decoded = data.decoder(), data.labels.ignore_index, 0
    for sample in samples:
        try:
            if (decode(sample)[1] != ignore).any():
                return
            decoded += 1
        except DatasetError:  # a broken file is the loader's to name, with every other defect `--check` finds
            continue
    if not decoded:
        return
    split = data.hparams.train_split if option == "--data.train_split" else data.hparams.val_split
    raise DatasetError(f"{option}: every pixel of every mask of {split} ({len(samples)} samples in "
                       f"{data.root}) is {ignore} (ignored): {consequence}; check the masks with "
                       f"`python -m {type(data).__module__} --check {data.root}`")


def check_evaluation_split(config, data: SegmentationDataModule) -> None:
    """The evaluation split lists existing files and has a labelled pixel (else mIoU is undefined), checked
    before the run's folder and W&B run exist. Skipped where no evaluation runs or `data.generate` writes it."""
    if config.trainer.get("limit_val_batches") == 0:
        return
    try:
        samples = data.list_samples(data.hparams.val_split)
    except DatasetError:
        if config.data.init_args.get("generate"):
            return
        raise
    check_labelled(data, samples, "--data.val_split", "no pixel to score, mIoU would be undefined")


def check_run_folder(config) -> None:
    """The run folder (the logger's save_dir) can be created and written by this process."""
    logger = config.trainer.logger
    if logger and not isinstance(logger, bool) and logger.init_args.get("save_dir"):
        check_output_path("--trainer.logger.init_args.save_dir", logger.init_args.save_dir, directory=True)


#: a train batch's bytes per pixel of the crop in the loader's shared memory: uint8 image (3) + uint8 mask (1)
SHARED_BYTES_PER_PIXEL = 4


def check_shared_memory(config, shm: str = "/dev/shm") -> None:
    """Loader workers hand every batch over in shared memory (`/dev/shm`); a container's default (64 MB) is
    smaller than the paper's 8 workers × 2 prefetched batches of 16 crops of 513², and a worker then dies with a
    bus error deep inside the loader. Counted for one node: every process's workers share its /dev/shm."""
    hp = config.data.init_args
    workers = hp.get("num_workers") or 0
    if workers <= 0 or not os.path.isdir(shm):
        return
    batch_bytes = hp.batch_size * hp.crop_size ** 2 * SHARED_BYTES_PER_PIXEL
    needed = workers * (hp.get("prefetch_factor") or 2) * batch_bytes
    free = shutil.disk_usage(shm).free
    if free < needed:
        mb = 2 ** 20
        raise ConfigError(shm, f"{free / mb:.0f} MB free; the loader's {workers} workers (--data.num_workers) "
                               f"need about {needed / mb:.0f} MB for their prefetched batches of "
                               f"{batch_bytes / mb:.1f} MB; give it more (docker run --shm-size=2g) or lower "
                               "--data.num_workers (0 loads in the training process)")


def check_wandb_mode(config) -> None:
    """WANDB_MODE=online without credentials would stop at wandb.init after the run folder exists."""
    logger = config.trainer.logger
    if not logger or isinstance(logger, bool) or "wandb" not in str(logger.get("class_path", "")).lower():
        return
    if os.environ.get("WANDB_MODE", "").lower() == "online" and not has_wandb_credentials():
        raise ConfigError("WANDB_MODE", "online needs W&B credentials (`wandb login` or WANDB_API_KEY); unset "
                                        "WANDB_MODE to log offline and `wandb sync` later")


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
    weights = config.model.get("label_weights")
    if weights is not None and weights != "median_frequency" and len(weights) != classes:
        raise ConfigError("--model.label_weights", f"expected {classes} weights, one per class of the dataset, or "
                                                   f"median_frequency; got {len(weights)}")
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
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    differ = differences(checkpoint_settings(checkpoint), run_settings(config.as_dict()))
    if differ and config.get("resume_changes", "refuse") != "apply":
        listed = "; ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
        raise ConfigError("--ckpt_path", f"{ckpt_path}: this resume changes the run: {listed}; expected the "
                                         "settings the checkpoint was trained with (its run's config.yaml), or "
                                         f"--resume_changes apply to change them from step "
                                         f"{checkpoint.get('global_step')} on")
    return differ


def _check(condition: bool, option: str, expected: str) -> None:
    if not condition:
        raise ConfigError(option, expected)


def check_network_options(net) -> None:
    """`model.net.init_args` (a parsed Namespace or a dict) that no network can be built from: also run by the
    ablation runner on every row before anything starts, its dry run included."""
    backbone = net.get("backbone")
    _check(backbone in BACKBONES, "--model.net.init_args.backbone",
           f"expected one of {', '.join(BACKBONES)}, got {backbone!r}")
    _check(net.get("output_stride") in OUTPUT_STRIDES, "--model.net.init_args.output_stride",
           f"expected one of {', '.join(map(str, OUTPUT_STRIDES))}, got {net.get('output_stride')}")
    resnets = [name for name in BACKBONES if name.startswith("resnet")]
    _check(not net.get("multi_grid") or backbone in resnets, "--model.net.init_args.multi_grid",
           f"expected null with {backbone!r} (multi-grid is a ResNet setting: {', '.join(resnets)}), "
           f"got {net.get('multi_grid')}")
    _check(not net.get("official_layers") or backbone == "mobilenet_v2", "--model.net.init_args.official_layers",
           f"expected false with {backbone!r} (it changes only mobilenet_v2; the others already compute as the "
           "official network: docs/fidelity.md)")


def check_config(config) -> None:
    """Option values the run cannot use, refused when the config is parsed: before a run directory, a W&B
    run or a data loader exists, and naming the option rather than failing deep inside torch."""
    model, data = config.model, config.data.init_args  # data: the dataset layout's class_path + init_args
    net = model.net.init_args if "init_args" in model.net else model.net
    _check(model.lr > 0, "--model.lr", f"expected a learning rate > 0, got {model.lr}")
    _check(model.weight_decay >= 0, "--model.weight_decay", f"expected >= 0, got {model.weight_decay}")
    _check(0 <= model.momentum < 1, "--model.momentum", f"expected 0 <= momentum < 1, got {model.momentum}")
    check_network_options(net)
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
