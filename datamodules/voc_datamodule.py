"""LightningDataModule for VOC 2012 (+ SBD trainaug) with the paper's augmentation."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from . import synthetic
from .dataset import EpochSampler, SegmentationDataset, ShardSampler, pad_collate
from .transforms import NORMALIZATIONS, eval_transform, mean_pixel, train_transform
from .voc import DatasetError, list_split, voc_dir


class VOCDataModule(L.LightningDataModule):
    """Train on `train_split` (default trainaug, 10,582 images) with random scale, 513 crop and flip;
    validate on the full val images.

    Args:
        root: directory holding `VOCdevkit/VOC2012` (and `benchmark_RELEASE` unless `sbd_root` is set).
        generate: write the generated VOC-format dataset (`datamodules.synthetic`) to `root` if it does
            not exist yet — for the quickstart and tests, never for real data.
        normalization: "imagenet" or "inception"; must match the backbone's weights (checked at fit). Images
            leave the loader as uint8 and are normalised on the device (`SegmentationModule`); this picks
            the padding colour, the mean pixel.
        batch_size: the **global** batch (the paper's 16: BN statistics need it), split evenly over the
            processes (devices × nodes); it must divide by their number.
        val_batch_size: 1 (the official setting), or more with padding labelled 255.
        seed: shuffling and augmentation depend only on (seed, epoch, index).
    """

    def __init__(
        self,
        root: str = "data/voc",
        sbd_root: str | None = None,
        train_split: str = "trainaug",
        val_split: str = "val",
        generate: bool = False,
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
        self.root, self.sbd_root, self.generate = Path(root), sbd_root, generate
        self.normalization = normalization
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.seed = seed

    def prepare_data(self) -> None:
        if not self.generate or voc_dir(self.root).exists():
            return
        # Never mix generated files into a directory that holds something else (a mistyped --data.root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise DatasetError(f"{self.root}: data.generate would write the generated dataset here, but it is not "
                               "an empty directory and holds no VOCdevkit/VOC2012; expected the root of a VOC tree, "
                               "or a new or empty directory")
        print(f"data.generate: writing the generated VOC-format dataset to {self.root} (not real VOC data)")
        # written beside and renamed into place: a killed generation leaves no half-written dataset
        tmp = self.root.parent / f".{self.root.name}.generating-{os.getpid()}"
        synthetic.generate(tmp, seed=self.seed)
        if self.root.exists():
            self.root.rmdir()
        os.replace(tmp, self.root)

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
        if stage == "fit":
            samples = list_split(self.root, hp.train_split, self.sbd_root)
            transform = train_transform(hp.crop_size, tuple(hp.scale_range), hp.scale_step, hp.flip_prob, self.normalization)
            self.train_set = SegmentationDataset(samples, transform, seed=self.seed)
        self.val_set = SegmentationDataset(list_split(self.root, hp.val_split, self.sbd_root), eval_transform())

    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        kwargs = dict(num_workers=hp.num_workers, pin_memory=hp.pin_memory)
        if hp.num_workers > 0:
            kwargs.update(persistent_workers=hp.persistent_workers, prefetch_factor=hp.prefetch_factor)
        return kwargs

    def train_dataloader(self) -> StatefulDataLoader:
        rank, world = self._rank_world()
        sampler = EpochSampler(len(self.train_set), seed=self.seed, rank=rank, world_size=world)
        # On resume Lightning restores the loader's mid-epoch position (fast-forwarding the sampler)
        # before it calls set_epoch: the sampler must already be in the restored epoch by then.
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        batch_size = self.per_process_batch_size
        if len(sampler) < batch_size:
            raise ValueError(f"{self.hparams.train_split} has {len(sampler)} samples per process, fewer than "
                             f"the per-process batch {batch_size} (data.batch_size={self.batch_size} over {world})")
        # StatefulDataLoader: Lightning saves its position in the checkpoint and resumes mid-epoch
        return StatefulDataLoader(self.train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                                  **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return DataLoader(self.val_set, batch_size=self.val_batch_size, sampler=ShardSampler(len(self.val_set), rank, world),
                          collate_fn=partial(pad_collate, image_fill=mean_pixel(self.normalization)),
                          **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        # VOC test labels are not public: `test` evaluates `val_split` with the same protocol
        return self.val_dataloader()
