"""Reading PASCAL VOC 2012 and SBD as they are distributed, and the paper's splits.

Layout under `root` (both can be symlinks to a shared copy):

    VOCdevkit/VOC2012/JPEGImages/*.jpg, SegmentationClass/*.png (palette), ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/*.png   (optional: the widely shared trainaug masks, gray indices)
    benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}   (SBD; `sbd_root` can point elsewhere)

`python -m datamodules.voc --check ROOT` validates a whole tree and prints the split sizes.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torchvision.io import ImageReadMode, decode_image, decode_png, read_file

NUM_CLASSES = 21
IGNORE_INDEX = 255
SPLITS = ("train", "val", "trainaug")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)"
SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html (benchmark.tgz)"


class DatasetError(ValueError):
    """Bad or missing data; the message names the file and what was expected."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path  # .png (palette or gray class indices) or SBD .mat


def voc_dir(root: Path) -> Path:
    return Path(root) / "VOCdevkit" / "VOC2012"


def _read_ids(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"missing split file {path}: expected {what}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: empty split file; expected {what}, one image id per line")
    return ids


def _check_files(samples: dict[str, Sample], listed_in: dict[str, Path]) -> None:
    """Every listed id has its image and mask: a split naming files that are not there is a wrong tree
    (a partial download or the wrong root), not something to train around."""
    for image_id, sample in samples.items():
        for path in (sample.image, sample.mask):
            if not path.is_file():
                missing = sum(not s.image.is_file() or not s.mask.is_file() for s in samples.values())
                raise DatasetError(f"{listed_in[image_id]}: lists {image_id} but {path} does not exist "
                                   f"({missing} of {len(samples)} listed samples have missing files)")


def list_split(root: str | Path, split: str, sbd_root: str | Path | None = None) -> list[Sample]:
    """The samples of `split`, sorted by id.

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
    voc_val = _read_ids(lists / "val.txt", f"the VOC 2012 val list (from {VOC_URL})")
    if split in ("val", "train"):
        ids = voc_val if split == "val" else _read_ids(lists / "train.txt", f"the VOC 2012 train list (from {VOC_URL})")
        samples = {i: Sample(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png") for i in ids}
        _check_files(samples, dict.fromkeys(ids, lists / f"{split}.txt"))
        return list(samples.values())
    voc_train = _read_ids(lists / "train.txt", f"the VOC 2012 train list (from {VOC_URL})")

    sbd = Path(sbd_root) if sbd_root else root / "benchmark_RELEASE"
    sbd_data = sbd / "dataset"
    aug = voc / "SegmentationClassAug"
    extra: set[str] = set()
    listed_in = {}
    if sbd_data.is_dir():
        what = f"an SBD split list (from {SBD_URL})"
        for name in ("val.txt", "train.txt"):
            ids = _read_ids(sbd_data / name, what)
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
    _check_files(samples, listed_in)
    return list(samples.values())


def decode_sample(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 image 3×H×W, uint8 mask 1×H×W of class indices); DatasetError naming the file otherwise."""
    image = _decode_image(sample.image)
    mask = _decode_mask(sample.mask)
    if mask.shape[-2:] != image.shape[-2:]:
        raise DatasetError(
            f"{sample.mask}: mask is {tuple(mask.shape[-2:])} but its image {sample.image} is "
            f"{tuple(image.shape[-2:])}; expected the same height and width"
        )
    bad = (mask > NUM_CLASSES - 1) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(mask[bad].unique().tolist()))[:10]
        raise DatasetError(f"{sample.mask}: labels {values} outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX} (ignore)")
    return image, mask


def _decode_image(path: Path) -> torch.Tensor:
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise DatasetError(f"missing image {path}") from None
    except RuntimeError as e:
        raise DatasetError(f"{path}: cannot decode the image ({e}); expected a JPEG") from None


def _decode_mask(path: Path) -> torch.Tensor:
    if not path.exists():
        raise DatasetError(f"missing mask {path}")
    if path.suffix == ".mat":
        try:
            seg = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        except Exception as e:  # scipy raises several types for corrupt files
            raise DatasetError(f"{path}: cannot read the SBD mask ({e}); expected a .mat with GTcls.Segmentation") from None
        return torch.from_numpy(np.ascontiguousarray(seg, dtype=np.uint8))[None]
    try:
        mask = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise DatasetError(f"{path}: cannot decode the mask ({e}); expected a palette or gray PNG") from None
    if mask.shape[0] != 1:
        raise DatasetError(f"{path}: mask has {mask.shape[0]} channels; expected a palette or gray PNG of class indices")
    return mask


def check_tree(root: str | Path, sbd_root: str | Path | None = None, splits=SPLITS) -> dict[str, int]:
    """Decode every sample of every split; raise on the first bad file, return sample counts."""
    counts = {}
    for split in splits:
        samples = list_split(root, split, sbd_root)
        for sample in samples:
            decode_sample(sample)
        counts[split] = len(samples)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="ROOT", required=True, help="dataset root holding VOCdevkit/")
    parser.add_argument("--sbd-root", default=None, help="SBD benchmark_RELEASE directory (default ROOT/benchmark_RELEASE)")
    args = parser.parse_args(argv)
    try:
        for split in SPLITS:
            try:
                print(f"{split}: {check_tree(args.check, args.sbd_root, [split])[split]} samples OK")
            except DatasetError as e:
                if split == "trainaug" and "needs SBD" in str(e):
                    print(f"trainaug: not available ({e})")
                else:
                    raise
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
