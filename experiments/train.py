"""Train, validate and test DeepLabV3+ with one command (LightningCLI).

    python -m experiments.train fit --config experiments/configs/quickstart.yaml
    python -m experiments.train fit --config experiments/configs/resnet101_os16.yaml --ckpt_path last
    python -m experiments.train validate --config experiments/configs/resnet101_os16.yaml \
        --ckpt_path runs/resnet101_os16/.../best.ckpt --model.eval_output_stride 8 \
        --model.eval_scales '[0.5,0.75,1.0,1.25,1.5,1.75]' --model.eval_flip true

`experiments/configs/base.yaml` is always read first; a named config only says what differs.
Segment your own images with `python -m experiments.predict` (README "Use a trained model").
"""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from datamodules.base import SegmentationDataModule
from lightning_modules.checkpointing import resolve_ckpt_path
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


def gpu_run(accelerator) -> bool:
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    return name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())


class TrainCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Predicting on your own images is `experiments.predict` (files in, palette PNGs out), not a trainer loop.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser) -> None:
        # The dataset is data: VOC unless `data.class_path` names another layout (FolderDataModule,
        # CityscapesDataModule), and the network's class count is the datamodule's.
        parser.set_defaults({"data": {"class_path": "datamodules.voc_datamodule.VOCDataModule"}})
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
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
        if self.subcommand == "fit" and config.get("ckpt_path"):
            config.ckpt_path = resolve_ckpt_path(config.ckpt_path, config.trainer.default_root_dir)


def main(args: list[str] | None = None) -> TrainCLI:
    subcommand_kwargs = {"default_config_files": [str(BASE_CONFIG)]}
    return TrainCLI(
        SegmentationModule,
        SegmentationDataModule,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={name: subcommand_kwargs for name in ("fit", "validate", "test")},
        args=args,
    )


if __name__ == "__main__":
    main()
