"""Pictures next to mIoU in every run: evaluation images with predicted and true masks in W&B."""
from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

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
