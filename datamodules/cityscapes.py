"""Cityscapes fine annotations as distributed (leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip).

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The 19 evaluated classes are the official train ids, mapped from the label ids stored in
`*_gtFine_labelIds.png` (cityscapesScripts `labels.py`); every other label id becomes 255 (not scored).
2975 train and 500 val images of 1024×2048. `python -m datamodules.cityscapes --check ROOT` decodes
every sample and reports every defect.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from . import synthetic
from .base import SegmentationDataModule
from .check import check_splits
from .reading import DatasetError, LabelSpace, Sample, decode_sample, label_lookup

CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)"
#: train id → (name, label id, colour) — cityscapesScripts labels.py
CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)
CITYSCAPES_LABELS = LabelSpace(tuple(name for name, _, _ in CLASSES), tuple(color for _, _, color in CLASSES))
#: label id → train id (others → 255)
LABEL_TO_TRAIN_ID = {label_id: train_id for train_id, (_, label_id, _) in enumerate(CLASSES)}
IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def list_cityscapes_split(root: str | Path, split: str, strict: bool = True) -> list[Sample]:
    """The samples of `split` ("train", "val"), sorted by city and frame; every image needs its labelIds mask
    (`strict`: a DatasetError at the first missing one; `--check` reports them all)."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DatasetError(f"Cityscapes split {split!r} not found: expected the directory {image_dir} "
                           f"(get it from {CITYSCAPES_URL})")
    samples = []
    for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        mask = root / "gtFine" / split / image.parent.name / image.name.replace(IMAGE_SUFFIX, MASK_SUFFIX)
        if strict and not mask.is_file():
            raise DatasetError(f"missing mask {mask} for {image} (gtFine from {CITYSCAPES_URL})")
        samples.append(Sample(image, mask))
    if not samples:
        raise DatasetError(f"no images *{IMAGE_SUFFIX} in {image_dir}/<city>/")
    return samples


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes train_fine → val at full resolution (paper Table 7: crop 769, eval canvas 1025×2049).

    Args:
        root: directory holding `leftImg8bit/` and `gtFine/`.
        crop_size: 769, the official training crop.
        generate: write a small generated tree in this layout (`datamodules.synthetic`) to `root` if it has
            no `leftImg8bit/` yet — for smoke runs and tests, never for real data.
        Every other argument: `SegmentationDataModule`.
    """

    labels = CITYSCAPES_LABELS

    def __init__(self, root: str = "data/cityscapes", crop_size: int = 769, generate: bool = False, **kwargs) -> None:
        super().__init__(root=root, crop_size=crop_size, **kwargs)
        self.generate = generate

    def prepare_data(self) -> None:
        if self.generate and not (Path(self.root) / "leftImg8bit").exists():
            synthetic.generate_cityscapes(self.root, seed=self.seed)

    def list_samples(self, split: str, strict: bool = True) -> list[Sample]:
        return list_cityscapes_split(self.root, split, strict)

    def decoder(self):
        return partial(decode_sample, num_classes=self.num_classes, lookup=label_lookup(LABEL_TO_TRAIN_ID))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="ROOT", required=True, help="directory holding leftImg8bit/ and gtFine/")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    data = CityscapesDataModule(args.check)
    return check_splits(partial(data.list_samples, strict=False), data.decoder(), args.splits)


if __name__ == "__main__":
    sys.exit(main())
