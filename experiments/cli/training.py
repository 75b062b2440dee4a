"""The training CLI: LightningCLI with the run's checks, bookkeeping and one-line errors.

Entry point: `python -m experiments.train` (`experiments/train.py`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from datamodules.base import SegmentationDataModule
from experiments.cli.checks import (apply_checkpoint_interval, check_config, check_evaluation_split,
                                    check_fresh_run_dir, check_network, check_run_folder, check_shared_memory,
                                    check_training_split, check_wandb_mode, check_weights, datamodule,
                                    explicit_num_classes, resume_differences)
from experiments.cli.errors import (USER_ERRORS, ConfigError, OneLineErrorParser, config_files,
                                    locate_in_config_files, one_line)
from lightning_modules.run.checkpoints import AtomicCheckpointIO, resolve_ckpt_path
from lightning_modules.run import lock as run_lock
from lightning_modules.run.preemption import STOP_STATUS, Preemption
from lightning_modules.run.record import RunRecord
from lightning_modules.run.settings import CHANGES_KEY, SETTINGS_KEY, run_settings
from lightning_modules.segmentation import SegmentationModule

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
BASE_CONFIG = CONFIGS / "base.yaml"
#: the requirements a training run imports, whose versions go with every run (`run_metadata`)
PACKAGES = ("torch", "torchvision", "torchcodec", "lightning", "torchmetrics", "jsonargparse", "wandb", "timm",
            "torchdata", "scipy", "matplotlib")
#: requirements a training run never imports: the tests, and ONNX for `experiments.export` and its check
NOT_RUN_PACKAGES = ("pytest", "pytest-xdist", "onnx", "onnxscript", "onnxruntime")


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
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

    #: {setting: (checkpoint's, config's)} a resume with `--resume_changes apply` changes (set by the CLI)
    resume_changes: dict[str, tuple] = {}
    #: every deliberate change of the run so far: [{"step", "changes": {setting: {"old", "new"}}}]
    changes: list[dict] = []

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict(), **run_metadata()})

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # what a resume is compared with (experiments.cli.checks.resume_differences)
        checkpoint[SETTINGS_KEY] = run_settings(self.config.as_dict())
        checkpoint[CHANGES_KEY] = self.changes

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """The run's record keeps the old and the new value of each deliberate change, with its step."""
        self.changes = list(checkpoint.get(CHANGES_KEY, []))
        if self.resume_changes:
            self.changes.append({"step": checkpoint["global_step"], "changes": {
                k: {"old": old, "new": new} for k, (old, new) in self.resume_changes.items()}})
            rank_zero_info(f"Resumed at step {checkpoint['global_step']} with changed settings: " + "; ".join(
                f"{k} {old} -> {new}" for k, (old, new) in self.resume_changes.items()))
        if self.changes:
            for logger in trainer.loggers:
                logger.log_hyperparams({CHANGES_KEY: self.changes})


def gpu_run(accelerator) -> bool:
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    return name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())


class TrainCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Predicting on your own images is `experiments.predict` (files in, palette PNGs out), not a trainer loop.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.subcommand_parser = parser  # (any subcommand's) for the valid keys a mistyped one is closest to
        # The dataset is data: VOC unless `data.class_path` names another layout (FolderDataModule,
        # CityscapesDataModule), and the network's class count is the datamodule's.
        parser.set_defaults({"data": {"class_path": "datamodules.voc_datamodule.VOCDataModule"}})
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--checkpoint_every_n_train_steps", type=int | None, default=None,
                            help="Save the periodic checkpoint every N steps (sets StepCheckpoint's interval)")
        parser.add_argument("--resume_changes", type=Literal["refuse", "apply"], default="refuse",
                            help="A resume (--ckpt_path) whose optimiser, schedule, data or network settings differ "
                                 "from its checkpoint's: refuse (list them), or apply them from the current step")
        parser.add_argument("--checkpoint_train_time_interval", type=str | None, default=None,
                            help="Save the periodic checkpoint every H:MM:SS of training instead")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        given = sys.argv[1:] if args is None else list(args)
        files = [BASE_CONFIG, *config_files(given)]
        try:
            super().parse_arguments(parser, args)
        except ConfigError as e:  # a mistake in a config file names the file (and line, or the closest key)
            try:
                valid_keys = list(self.subcommand_parser.get_defaults().keys())
            except Exception:  # base.yaml itself is the broken file: no keys to suggest
                valid_keys = []
            raise locate_in_config_files(e, files, valid_keys) from None
        self.explicit_num_classes = explicit_num_classes(given, files)
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path != "last":  # before LightningCLI reads its hyperparameters
            config.ckpt_path = resolve_ckpt_path(ckpt_path, ".")  # a run directory → its newest checkpoint
        # LightningCLI then puts a checkpoint's model hyperparameters over the command line's: a resumed `fit`
        # keeps the model config as given, and a difference from the checkpoint is refused or applied
        # (`--resume_changes`), never silently dropped
        self.given_model = config.model.clone() if self.config.get("subcommand") == "fit" else None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if getattr(self, "given_model", None) is not None:
            config.model = self.given_model
        check_config(config)
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
        fresh = self.subcommand == "fit" and not config.get("ckpt_path")
        if config.get("ckpt_path") == "last":
            config.ckpt_path = resolve_ckpt_path(config.ckpt_path, config.trainer.default_root_dir)
            if config.ckpt_path is None and self.subcommand != "fit":
                raise ConfigError("--ckpt_path", f"expected a checkpoint: none in {config.trainer.default_root_dir}")
        data = datamodule(config.data)
        if self.subcommand == "fit":
            check_training_split(config, data)
            check_shared_memory(config)
        check_evaluation_split(config, data)
        check_network(config, self.explicit_num_classes, data.num_classes)
        check_weights(config)
        check_run_folder(config)
        check_wandb_mode(config)
        # rank 0 only: the other processes of a DDP or SLURM run start while rank 0 is already writing the folder
        if fresh and logger and config.trainer.default_root_dir and rank_zero_only.rank == 0:
            check_fresh_run_dir(config.trainer.default_root_dir)
        self.resume_changes = {}
        if self.subcommand == "fit" and config.get("ckpt_path") and Path(config.ckpt_path).is_file():
            self.resume_changes = resume_differences(config, config.ckpt_path)
        if logger and config.trainer.default_root_dir:  # last: nothing is created before the checks above
            self.run_lock = run_lock.acquire(config.trainer.default_root_dir)

    def instantiate_trainer(self, **kwargs: Any):
        """Every checkpoint written atomically and durably; the run record beside the configured logger."""
        config_init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = (config_init.get("trainer") or {}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        if trainer.loggers:  # the first logger keeps naming the checkpoint directory
            ckpt_path = config_init.get("ckpt_path") if self.subcommand == "fit" else None
            record = RunRecord(trainer.default_root_dir, resume_from=ckpt_path)
            trainer.loggers = [*trainer.loggers, record]
            trainer.callbacks.insert(0, record)  # first: it rewinds the record before anything is logged
        for callback in trainer.callbacks:
            if isinstance(callback, LogConfigCallback):
                callback.resume_changes = getattr(self, "resume_changes", {})
        return trainer


#: how the training CLI is built (also by `experiments.measure.benchmark`, which measures the same objects)
CLI_KWARGS = dict(model_class=SegmentationModule, datamodule_class=SegmentationDataModule, subclass_mode_data=True,
                  save_config_callback=LogConfigCallback, save_config_kwargs={"overwrite": True},
                  parser_class=OneLineErrorParser)


#: Lightning warnings whose premise does not hold here (docs/errors.md "Warnings")
NOT_APPLICABLE_WARNINGS = (
    # an epoch shorter than log_every_n_steps: Lightning logs by global step, so it logs across epochs
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # the module normalises uint8 batches on the device by design (SegmentationModule.on_after_batch_transfer)
    r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
)
