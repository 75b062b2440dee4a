"""Your own dataset: a folder of images, index masks, a class list and split files.

    ROOT/classes.txt           one class per line, in index order: "name" or "name R G B" (palette colour)
    ROOT/images/<id>.jpg       (or .jpeg, .png)
    ROOT/masks/<id>.png        gray or palette PNG whose pixel values are class indices; `ignore_index`
                               (default 255) marks pixels that are not scored
    ROOT/splits/train.txt      one id per line (and val.txt; any other split name works too)

`python -m datamodules.folder --check ROOT` decodes every sample of train and val and reports every defect.
"""
from __future__ import annotations

import argparse
import sys
from functools import cached_property, partial
from pathlib import Path

from .base import SegmentationDataModule
from .check import check_splits, missing_file
from .reading import IGNORE_INDEX, DatasetError, LabelSpace, Sample, decode_sample, label_lookup, read_ids

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_classes(path: Path) -> LabelSpace:
    """Class names (and optional colours) from `classes.txt`; DatasetError naming the file and line."""
    if not path.is_file():
        raise DatasetError(f"missing class list {path}: expected one class name per line, in index order")
    names, colors = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) not in (1, 4) or (len(words) == 4 and not all(w.isdigit() and int(w) < 256 for w in words[1:])):
            raise DatasetError(f"{path}:{number}: {line!r}; expected 'name' or 'name R G B' with R, G, B in 0..255")
        names.append(words[0])
        if len(words) == 4:
            colors.append(tuple(int(w) for w in words[1:]))
    if len(names) < 2:
        raise DatasetError(f"{path}: {len(names)} classes; expected at least 2 (background counts as one)")
    if colors and len(colors) != len(names):
        raise DatasetError(f"{path}: colours on {len(colors)} of {len(names)} lines; give all or none")
    return LabelSpace(tuple(names), tuple(colors))


def list_folder_split(root: str | Path, split: str, image_dir: str = "images", mask_dir: str = "masks",
                      split_dir: str = "splits", strict: bool = True) -> list[Sample]:
    """The samples whose ids `splits/<split>.txt` lists, in file order. `strict`: a DatasetError up front if
    a listed image or mask is missing, naming the closest file that is there (`--check` lists without it
    and reports every missing file)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} not found: expected classes.txt, {image_dir}/, {mask_dir}/, "
                           f"{split_dir}/")
    images = {p.stem: p for p in sorted((root / image_dir).glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    split_file = root / split_dir / f"{split}.txt"
    samples = [Sample(images.get(i, root / image_dir / f"{i}.jpg"), root / mask_dir / f"{i}.png")
               for i in read_ids(split_file, f"the ids of split {split!r}, one per line")]
    if strict:
        for what in ("image", "mask"):
            missing = [getattr(s, what) for s in samples if not getattr(s, what).is_file()]
            if missing:
                suffixes = " (or .jpeg/.png)" if what == "image" else ""
                raise DatasetError(f"{split_file}: lists {missing[0].stem} but there is no "
                                   f"{missing_file(missing[0], what).removeprefix('missing ')}{suffixes} "
                                   f"({len(missing)} of {len(samples)} listed {what}s are missing)")
    return samples


class FolderDataModule(SegmentationDataModule):
    """A dataset in the folder layout above; every other argument: `SegmentationDataModule`.

    Args:
        root: the dataset folder.
        classes_file, image_dir, mask_dir, split_dir: names inside `root`.
        ignore_index: mask value of pixels that are not scored (mapped to 255 when read).
    """

    def __init__(self, root: str, classes_file: str = "classes.txt", image_dir: str = "images",
                 mask_dir: str = "masks", split_dir: str = "splits", ignore_index: int = IGNORE_INDEX,
                 **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.root = Path(root)
        self.lookup = label_lookup({v: v for v in range(256) if v != ignore_index})

    @cached_property
    def labels(self) -> LabelSpace:
        """From `classes.txt`, read when first needed (the CLI reads `num_classes` right after construction)."""
        labels = read_classes(self.root / self.hparams.classes_file)
        ignore = self.hparams.ignore_index
        if not labels.num_classes <= ignore < 256:
            raise DatasetError(f"data.ignore_index={ignore}: expected a mask value in {labels.num_classes}..255 "
                               f"(0..{labels.num_classes - 1} are the classes of {self.root / self.hparams.classes_file})")
        return labels

    def list_samples(self, split: str, strict: bool = True) -> list[Sample]:
        hp = self.hparams
        return list_folder_split(self.root, split, hp.image_dir, hp.mask_dir, hp.split_dir, strict)

    def decoder(self):
        return partial(decode_sample, num_classes=self.num_classes, lookup=self.lookup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="ROOT", required=True, help="the dataset folder")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    data = FolderDataModule(args.check)
    try:
        print(f"{data.num_classes} classes: {', '.join(data.labels.class_names)}")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return check_splits(partial(data.list_samples, strict=False), data.decoder(), args.splits)


if __name__ == "__main__":
    sys.exit(main())
