"""The datamodule every dataset layout shares: the paper's augmentation, (seed, epoch, index) sampling,
full-image evaluation, and the dataset's labels (`LabelSpace`) for the model, metrics and logs.

A layout (VOC, a folder of images and masks, Cityscapes) subclasses it and says only which samples a
split holds (`list_samples`), what its labels are (`labels`) and how a sample is decoded (`decode`).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from .dataset import EpochSampler, SegmentationDataset, ShardSampler, pad_collate
from .reading import DatasetError, LabelSpace, Sample, decode_sample
from .transforms import NORMALIZATIONS, eval_transform, mean_pixel, train_transform


class SegmentationDataModule(L.LightningDataModule):
    """Train on `train_split` with random scale, crop and flip; validate on the full `val_split` images.

    Args:
        root: the dataset directory (layout per subclass).
        train_split / val_split: split names of the layout.
        crop_size: training crop (paper: 513 on VOC, 769 on Cityscapes).
        scale_range / scale_step: random scale range; `scale_step` 0.25 gives the official steps.
        normalization: "imagenet" or "inception"; must match the backbone's weights (checked at fit). Images
            leave the loader as uint8 and are normalised on the device (`SegmentationModule`); this picks
            the padding colour, the mean pixel.
        batch_size: the **global** batch (the paper's 16: BN statistics need it), split evenly over the
            processes (devices × nodes); it must divide by their number.
        val_batch_size: 1 (the official setting), or more with padding labelled 255.
        seed: shuffling and augmentation depend only on (seed, epoch, index).
    """

    #: class names, palette and ignore index; a layout with a fixed class list sets it on the class
    labels: LabelSpace

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        crop_size: int = 513,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float | None = 0.25,
        flip_prob: float = 0.5,
        normalization: str = "imagenet",
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"data.normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"data.scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        self.save_hyperparameters()
        self.root = root
        self.normalization = normalization
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.seed = seed

    # -- what a layout provides ---------------------------------------------------------------------
    def list_samples(self, split: str, strict: bool = True) -> list[Sample]:
        """The (image, mask) files of `split`; DatasetError naming what is missing (`strict=False`: listed
        as they should be, for `--check` to report every missing file)."""
        raise NotImplementedError

    def decoder(self) -> Callable[[Sample], tuple[torch.Tensor, torch.Tensor]]:
        """sample → (uint8 image 3×H×W, uint8 mask 1×H×W of class indices); a picklable function for
        loader workers (a bound method would pickle the trainer with it)."""
        return partial(decode_sample, num_classes=self.num_classes)

    @property
    def num_classes(self) -> int:
        """Read by the CLI for the network's `num_classes` (experiments/train.py links them)."""
        return self.labels.num_classes

    # -- Lightning hooks ----------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    @property
    def per_process_batch_size(self) -> int:
        """`batch_size` / number of processes: what one DataLoader yields per step."""
        _, world = self._rank_world()
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} is the global batch and must divide evenly over "
                             f"{world} processes (devices × nodes); use a multiple of {world}")
        return self.batch_size // world

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            per_process = self.per_process_batch_size
            rank_zero_info(f"batch: {self.batch_size} global = {per_process} per process × "
                           f"{self._rank_world()[1]} processes")
            if self.trainer is not None:
                for logger in self.trainer.loggers:
                    logger.log_hyperparams({"global_batch_size": self.batch_size,
                                            "per_process_batch_size": per_process})
            transform = train_transform(hp.crop_size, tuple(hp.scale_range), hp.scale_step, hp.flip_prob,
                                        self.normalization)
            self.train_set = SegmentationDataset(self.list_samples(hp.train_split), transform, seed=self.seed,
                                                 decode=self.decoder())
        self.val_set = SegmentationDataset(self.list_samples(hp.val_split), eval_transform(), decode=self.decoder())

    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        # pinned host memory only speeds up copies to an accelerator; on a CPU run the loader warns about it
        on_cpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cpu"
        kwargs = dict(num_workers=hp.num_workers, pin_memory=hp.pin_memory and not on_cpu)
        if hp.num_workers > 0:
            kwargs.update(persistent_workers=hp.persistent_workers, prefetch_factor=hp.prefetch_factor)
        return kwargs

    def train_dataloader(self) -> StatefulDataLoader:
        rank, world = self._rank_world()
        batch_size = self.per_process_batch_size
        sampler = EpochSampler(len(self.train_set), seed=self.seed, rank=rank, world_size=world, batch_size=batch_size)
        if len(sampler) == 0:
            raise DatasetError(f"--data.batch_size: expected at most {len(self.train_set) // world} per process, the "
                               f"samples of {self.hparams.train_split} per process; got {batch_size} "
                               f"(data.batch_size={self.batch_size} over {world} processes)")
        # A resumed run's loader gets its (epoch, position) from the checkpoint; a new one starts at the
        # trainer's epoch. StatefulDataLoader: Lightning saves the position and resumes mid-epoch.
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return StatefulDataLoader(self.train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                                  **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return DataLoader(self.val_set, batch_size=self.val_batch_size,
                          sampler=ShardSampler(len(self.val_set), rank, world),
                          collate_fn=partial(pad_collate, image_fill=mean_pixel(self.normalization)),
                          **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        # test labels of VOC and Cityscapes are not public: `test` evaluates `val_split` with the same protocol
        return self.val_dataloader()
