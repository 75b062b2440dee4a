"""LightningDataModule for VOC 2012 (+ SBD trainaug) with the paper's augmentation."""
from __future__ import annotations

from pathlib import Path

from . import synthetic
from .base import SegmentationDataModule
from .reading import Sample
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
        if self.generate and not voc_dir(self.root).exists():
            synthetic.generate(self.root, seed=self.seed)

    def list_samples(self, split: str) -> list[Sample]:
        return list_split(self.root, split, self.sbd_root)
