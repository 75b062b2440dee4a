"""LightningDataModule for VOC 2012 (+ SBD trainaug) with the paper's augmentation."""
from __future__ import annotations

import os
from pathlib import Path

from . import synthetic
from .base import SegmentationDataModule
from .reading import DatasetError, Sample
from .voc import VOC_LABELS, list_split, voc_dir


class VOCDataModule(SegmentationDataModule):
    """Train on `train_split` (default trainaug, 10,582 images) with random scale, 513 crop and flip;
    validate on the full val images. Every other argument: `SegmentationDataModule`.

    Args:
        root: directory holding `VOCdevkit/VOC2012` (and `benchmark_RELEASE` unless `sbd_root` is set).
        sbd_root: SBD's `benchmark_RELEASE` elsewhere.
        train_split: "train" or "trainaug".
        generate: write the generated VOC-format dataset (`datamodules.synthetic`) to `root` if it does
            not exist yet — for the quickstart and tests, never for real data.
    """

    labels = VOC_LABELS

    def __init__(self, root: str = "data/voc", sbd_root: str | None = None, train_split: str = "trainaug",
                 generate: bool = False, **kwargs) -> None:
        super().__init__(root=root, train_split=train_split, **kwargs)
        self.root, self.sbd_root, self.generate = Path(root), sbd_root, generate

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

    def list_samples(self, split: str, strict: bool = True) -> list[Sample]:
        return list_split(self.root, split, self.sbd_root, strict)
