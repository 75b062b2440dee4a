"""Reading PASCAL VOC 2012 and SBD as they are distributed, and the paper's splits.

Layout under `root` (both can be symlinks to a shared copy):

    VOCdevkit/VOC2012/JPEGImages/*.jpg, SegmentationClass/*.png (palette), ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt   (optional: the test tarball, images only, for the server)
    VOCdevkit/VOC2012/SegmentationClassAug/*.png   (optional: the widely shared trainaug masks, gray indices)
    benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}   (SBD; `sbd_root` can point elsewhere)

`python -m datamodules.voc --check ROOT` validates a whole tree, prints the split sizes and every defect.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import check, reading
from .reading import IGNORE_INDEX, DatasetError, LabelSpace, Sample, check_files, color_map, read_ids

NUM_CLASSES = 21
SPLITS = ("train", "val", "trainaug")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_LABELS = LabelSpace(VOC_CLASSES, tuple(color_map(NUM_CLASSES)), IGNORE_INDEX)
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)"
VOC_TEST_URL = ("http://host.robots.ox.ac.uk:8080/ (VOC2012test.tar, after registering with the evaluation "
                "server; it unpacks into the same VOCdevkit/VOC2012)")
SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html (benchmark.tgz)"


def voc_dir(root: Path) -> Path:
    return Path(root) / "VOCdevkit" / "VOC2012"


def list_split(root: str | Path, split: str, sbd_root: str | Path | None = None, strict: bool = True) -> list[Sample]:
    """The samples of `split`, sorted by id; `strict`: a DatasetError if a listed file is missing (`--check`
    lists without it and reports each missing file itself).

    trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val, computed from the files (10,582 on the real
    data). Masks come from VOC's own annotation where it exists (finer, with 255 boundaries), else from
    SegmentationClassAug if present, else from SBD's `.mat`.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {SPLITS}")
    root = Path(root)
    voc = voc_dir(root)
    if not voc.is_dir():
        raise DatasetError(f"PASCAL VOC 2012 not found: expected the directory {voc} (get it from {VOC_URL})")
    lists = voc / "ImageSets" / "Segmentation"
    voc_val = read_ids(lists / "val.txt", f"the VOC 2012 val list (from {VOC_URL})")
    if split in ("val", "train"):
        ids = voc_val if split == "val" else read_ids(lists / "train.txt", f"the VOC 2012 train list (from {VOC_URL})")
        samples = {i: Sample(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png") for i in ids}
        if strict:
            check_files(samples, dict.fromkeys(ids, lists / f"{split}.txt"))
        return list(samples.values())
    voc_train = read_ids(lists / "train.txt", f"the VOC 2012 train list (from {VOC_URL})")

    sbd = Path(sbd_root) if sbd_root else root / "benchmark_RELEASE"
    sbd_data = sbd / "dataset"
    aug = voc / "SegmentationClassAug"
    extra: set[str] = set()
    listed_in = {}
    if sbd_data.is_dir():
        what = f"an SBD split list (from {SBD_URL})"
        for name in ("val.txt", "train.txt"):
            ids = read_ids(sbd_data / name, what)
            extra |= set(ids)
            listed_in.update(dict.fromkeys(ids, sbd_data / name))
    elif aug.is_dir():
        extra |= {p.stem for p in aug.glob("*.png")}
        listed_in.update({i: aug for i in extra})
    else:
        raise DatasetError(
            f"split 'trainaug' needs SBD at {sbd_data} (get benchmark.tgz from {SBD_URL}) "
            f"or the SegmentationClassAug masks at {aug}"
        )
    ids = sorted((set(voc_train) | extra) - set(voc_val))
    voc_train_set = set(voc_train)
    listed_in.update(dict.fromkeys(voc_train, lists / "train.txt"))
    samples = {}
    for i in ids:
        image = voc / "JPEGImages" / f"{i}.jpg"
        if not image.exists() and sbd_data.is_dir():
            image = sbd_data / "img" / f"{i}.jpg"
        if i in voc_train_set:
            mask = voc / "SegmentationClass" / f"{i}.png"
        elif aug.is_dir():
            mask = aug / f"{i}.png"
        else:
            mask = sbd_data / "cls" / f"{i}.mat"
        samples[i] = Sample(image, mask)
    if strict:
        check_files(samples, listed_in)
    return list(samples.values())


def list_test_images(root: str | Path) -> dict[str, Path]:
    """id → JPEG of the VOC 2012 `test` split (1,456 images, no masks: the evaluation server scores them).

    DatasetError, one line, when the list or an image is missing, or when the listed ids have masks in
    SegmentationClass: the real test set has none, so such a list is another split (val renamed test.txt)
    and a server submission of it would score the wrong images."""
    voc = voc_dir(Path(root))
    lists = voc / "ImageSets" / "Segmentation"
    ids = read_ids(lists / "test.txt", f"the VOC 2012 test list (from {VOC_TEST_URL})")
    images = {i: voc / "JPEGImages" / f"{i}.jpg" for i in ids}
    missing = [i for i, path in images.items() if not path.is_file()]
    if missing:
        raise DatasetError(f"{lists / 'test.txt'}: {len(missing)} listed images missing, e.g. "
                           f"{images[missing[0]]}; expected the JPEGs of the test tarball ({VOC_TEST_URL})")
    masked = [i for i in ids if (voc / "SegmentationClass" / f"{i}.png").exists()]
    if masked:
        raise DatasetError(f"{lists / 'test.txt'}: {len(masked)} of its {len(ids)} ids have masks in "
                           f"{voc / 'SegmentationClass'} (e.g. {masked[0]}); the VOC 2012 test set has none — "
                           "expected the test tarball's list, not a labelled split")
    return images


def decode_sample(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 image 3×H×W, uint8 mask 1×H×W of class indices); DatasetError naming the file otherwise."""
    return reading.decode_sample(sample, NUM_CLASSES)


def check_tree(root: str | Path, sbd_root: str | Path | None = None, splits=SPLITS) -> int:
    """`--check`: every split's samples decoded once, every defect reported; exit status 1 if any."""
    return check.check_splits(lambda split: list_split(root, split, sbd_root, strict=False), decode_sample, splits,
                              optional=lambda e: "needs SBD" in str(e))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="ROOT", required=True, help="dataset root holding VOCdevkit/")
    parser.add_argument("--sbd_root", default=None,
                        help="SBD benchmark_RELEASE directory (default ROOT/benchmark_RELEASE)")
    parser.add_argument("--sbd-root", dest="sbd_root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old
    args = parser.parse_args(argv)
    return check_tree(args.check, args.sbd_root)


if __name__ == "__main__":
    sys.exit(main())
