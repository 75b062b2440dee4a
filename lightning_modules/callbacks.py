"""Callbacks that put speed and pictures next to mIoU in every run."""
from __future__ import annotations

import datetime
import resource
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .components.complexity import protocol_cost


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


class SpeedMonitor(L.Callback):
    """Logs `speed/*`: Multiply-Adds and parameters once, training images/s every `log_every_n_steps`,
    evaluation images/s and ms/image after each evaluation, and peak memory (MB)."""

    def __init__(self) -> None:
        self._train_images, self._train_time, self._t0 = 0, 0.0, 0.0
        self._eval_images, self._eval_t0 = 0, 0.0
        self.cost: dict[str, float] = {}

    def _log(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.cost = protocol_cost(pl_module.net.config, pl_module.eval_protocol)  # speed/multiply_adds(_tf), speed/parameters
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
                logger.experiment.summary.update(self.cost)
        self._log(trainer, self.cost)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._train_time += time.perf_counter() - self._t0
        self._train_images += batch[0].shape[0] * trainer.world_size
        if trainer.global_step % trainer.log_every_n_steps == 0 and self._train_time > 0:
            self._log(trainer, {"speed/train_images_per_s": self._train_images / self._train_time,
                                "speed/peak_memory_mb": peak_memory_mb(pl_module.device)})
            self._train_images, self._train_time = 0, 0.0

    def _eval_start(self) -> None:
        self._eval_images, self._eval_t0 = 0, time.perf_counter()

    def _eval_batch(self, batch) -> None:
        self._eval_images += batch[0].shape[0]

    def _eval_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._eval_images == 0:
            return
        seconds = time.perf_counter() - self._eval_t0
        self._log(trainer, {"speed/eval_images_per_s": self._eval_images / seconds,
                            "speed/eval_ms_per_image": 1000 * seconds / self._eval_images,
                            "speed/peak_memory_mb": peak_memory_mb(pl_module.device)})

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._eval_start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._eval_start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module)


class WandbPredictions(L.Callback):
    """A few evaluation images with predicted and true masks as W&B overlays, and the confusion matrix."""

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._samples: list = []

    @staticmethod
    def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _collect(self, trainer, outputs, batch) -> None:
        if trainer.sanity_checking or len(self._samples) >= self.num_images or self._wandb_logger(trainer) is None:
            return
        images, masks = batch
        for image, mask, pred in zip(images, masks, outputs["preds"]):
            if len(self._samples) < self.num_images:
                self._samples.append((image.float().cpu(), mask.cpu(), pred.cpu()))

    def _log(self, trainer, pl_module, stage: str) -> None:
        logger = self._wandb_logger(trainer)
        if trainer.sanity_checking or logger is None:
            return
        # compute() is collective across processes (and cached for the module's own epoch end)
        confmat = pl_module.metrics.compute().cpu().tolist()
        if rank_zero_only.rank == 0:
            self._log_media(logger, confmat, stage, trainer.global_step, pl_module.labels.class_names)
        self._samples = []

    def _log_media(self, logger: WandbLogger, confmat: list, stage: str, step: int, class_names) -> None:
        import wandb

        labels = dict(enumerate(class_names))
        pictures = []
        for image, mask, pred in self._samples:
            rgb = (image - image.amin()) / (image.amax() - image.amin()).clamp(min=1e-6)
            pictures.append(wandb.Image(
                rgb.permute(1, 2, 0).numpy(),
                masks={"prediction": {"mask_data": pred.numpy(), "class_labels": labels},
                       "ground_truth": {"mask_data": mask.numpy(), "class_labels": labels}}))
        table = wandb.Table(columns=["true \\ predicted", *class_names],
                            data=[[class_names[i], *row] for i, row in enumerate(confmat)])
        logger.experiment.log({f"{stage}/predictions": pictures, f"{stage}/confusion_matrix": table,
                               "trainer/global_step": step})

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._samples = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "test")


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` always holds the final step.

    Lightning writes `last.ckpt` at the end of training only if it never wrote one before, so with
    `every_n_train_steps` not dividing `max_steps` the file would keep an earlier step — and evaluations
    or resumed ablation rows would silently use stale weights. A run stopped before `max_steps` (SLURM
    requeue) writes no end-of-training checkpoint: the loop state of a stopped run would not resume
    exactly, and the requeue callback has already saved one at the step boundary.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if 0 < trainer.max_steps and trainer.global_step < trainer.max_steps:
            return
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar (per epoch) plus what a step-budgeted run needs: the global step out of
    `max_steps` and the time left for the whole run."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.training and trainer.max_steps > 0:
            items["step"] = f"{trainer.global_step}/{trainer.max_steps}"
            done = trainer.global_step - getattr(self, "_step0", trainer.global_step)
            if done > 0:
                left = (time.perf_counter() - self._t0) / done * (trainer.max_steps - trainer.global_step)
                items["eta"] = str(datetime.timedelta(seconds=int(left)))
        return items
