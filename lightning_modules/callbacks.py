"""Callbacks that put pictures next to mIoU in every run, checkpoint by step and show the run's progress
(speed: `speed_monitor.py`)."""
from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .checkpointing import CheckpointError, read_step

if TYPE_CHECKING:
    from datamodules.reading import LabelSpace


class WandbPredictions(L.Callback):
    """A few evaluation images with predicted and true masks as W&B overlays, and the confusion matrix.

    Each image is logged under its own key (`val/predictions/<i>`, the i-th image of the evaluation
    set): full-size evaluation images differ in size, and W&B lays out a list of images as if they had
    the first one's size (it warns "Images sizes do not match"). One key per image also lets the
    dashboard's step slider show the same image as training goes on.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._samples: list = []

    @staticmethod
    def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _collect(self, trainer, pl_module, outputs, batch) -> None:
        if trainer.sanity_checking or len(self._samples) >= self.num_images or self._wandb_logger(trainer) is None:
            return
        images, masks = batch
        # the batch is normalised on the device (`SegmentationModule.on_after_batch_transfer`): back to
        # the uint8 picture, which is what wandb.Image expects (it casts floats to uint8 as they are)
        pixels = (images.float() * pl_module.pixel_std + pl_module.pixel_mean).round().clamp(0, 255).byte()
        for image, mask, pred in zip(pixels, masks, outputs["preds"]):
            if len(self._samples) < self.num_images:
                self._samples.append((image.permute(1, 2, 0).cpu().numpy(), mask.byte().cpu().numpy(),
                                      pred.byte().cpu().numpy()))

    def _log(self, trainer, pl_module, stage: str) -> None:
        logger = self._wandb_logger(trainer)
        if trainer.sanity_checking or logger is None:
            return
        # compute() is collective across processes (and cached for the module's own epoch end)
        confmat = pl_module.metrics.compute().cpu().tolist()
        if rank_zero_only.rank == 0:
            self._log_media(logger, confmat, stage, trainer.global_step, pl_module.labels)
        self._samples = []

    def _log_media(self, logger: WandbLogger, confmat: list, stage: str, step: int, labels: LabelSpace) -> None:
        import wandb

        predicted = dict(enumerate(labels.class_names))
        true = {**predicted, labels.ignore_index: "not scored"}
        media = {f"{stage}/predictions/{i}": wandb.Image(
            image, caption=f"{stage} image {i}",
            masks={"prediction": {"mask_data": pred, "class_labels": predicted},
                   "ground_truth": {"mask_data": mask, "class_labels": true}})
            for i, (image, mask, pred) in enumerate(self._samples)}
        table = wandb.Table(columns=["true \\ predicted", *labels.class_names],
                            data=[[labels.class_names[i], *row] for i, row in enumerate(confmat)])
        logger.experiment.log({**media, f"{stage}/confusion_matrix": table, "trainer/global_step": step})

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._samples = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "test")


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` always holds the final step.

    Lightning writes `last.ckpt` at the end of training only if it never wrote one before, so with
    `every_n_train_steps` not dividing `max_steps` the file would keep an earlier step — and evaluations
    or resumed ablation rows would silently use stale weights. A run stopped before `max_steps` (SLURM
    requeue, SIGTERM) writes no end-of-training checkpoint: the loop state of a stopped run would not resume
    exactly, and the requeue callback has already saved one at the step boundary. Whether `last.ckpt`
    already holds the final step is read from the file (`read_step`), not from ModelCheckpoint's private
    bookkeeping, which changes between Lightning releases. With `enable_version_counter: false` (base.yaml)
    a resumed run overwrites `last.ckpt` instead of writing `last-v1.ckpt` beside it.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if 0 < trainer.max_steps and trainer.global_step < trainer.max_steps:
            return  # stopped early (requeue): not even Lightning's own end-of-training `last.ckpt`
        super().on_train_end(trainer, pl_module)
        if not self.save_last:
            return
        path = self.last_model_path or self.format_checkpoint_name({}, filename=self.CHECKPOINT_NAME_LAST)
        stale = False
        if trainer.is_global_zero:  # one reader decides, every process takes part in the save
            try:
                stale = read_step(path) != trainer.global_step
            except CheckpointError:  # none yet
                stale = True
        if trainer.strategy.broadcast(stale):
            self.last_model_path = path  # before the save: it is part of the state a resumed run restores
            trainer.save_checkpoint(path, self.save_weights_only)


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar (per epoch) plus what a step-budgeted run needs: the global step out of
    `max_steps` and the time left for the whole run.

    It refreshes every `trainer.log_every_n_steps` steps unless `refresh_rate` says otherwise: each refresh
    reads the logged loss, which on a GPU waits for the device, so a refresh every step would stop the
    host from running ahead (Lightning's default of 1 cost a synchronisation per step).
    """

    def __init__(self, refresh_rate: int | None = None, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(1 if refresh_rate is None else refresh_rate, process_position, leave)
        self.every = refresh_rate

    @property
    def refresh_rate(self) -> int:
        if self.every is not None:
            return self.every
        try:
            return max(1, self.trainer.log_every_n_steps)
        except TypeError:  # not attached to a trainer yet
            return 1

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
