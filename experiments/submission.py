"""The PASCAL VOC 2012 test set for the evaluation server (paper Table 6): the archive it takes, and its check.

`python -m experiments.predict --ckpt_path CKPT --voc_test ROOT --output OUT` segments the test images under the
paper's test protocol and calls `write_archive` and `check_archive`. The server (VOC_SERVER) wants one palette PNG
of class indices per test image, at the image's size, named `results/VOC2012/Segmentation/comp6_test_cls/<id>.png`
in a tar(.gz); comp6 is the "trained on data beyond VOC's own" category (SBD, COCO or ImageNet pretraining).
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from PIL import Image

from lightning_modules.components.protocol import MS_SCALES, PAPER_CROP

VOC_SERVER = "http://host.robots.ox.ac.uk:8080/"
#: where the masks go under OUT, as the archive holds them
RESULTS_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
ARCHIVE = "results.tar.gz"
#: the paper's test protocol (§4.3; Table 6): eval output stride 8, scales 0.5…1.75, left-right flip, 513 canvas
TEST_PROTOCOL = {"output_stride": 8, "scales": list(MS_SCALES), "flip": True, "canvas": [PAPER_CROP, PAPER_CROP]}


def write_archive(out: Path) -> Path:
    """OUT/results.tar.gz holding OUT/results/ (masks sorted by name, so the same masks give the same listing)."""
    archive = out / ARCHIVE
    masks = sorted((out / RESULTS_DIR).glob("*.png"))
    with tarfile.open(archive, "w:gz") as tar:
        for path in masks:
            tar.add(path, arcname=str(path.relative_to(out)))
    return archive


def check_archive(archive: Path, images: dict[str, Path], num_classes: int) -> list[str]:
    """What the server would refuse or misscore: a test id without its mask or with several, an extra file, a
    mask whose size differs from its image's, not a single-channel palette image, or an index ≥ `num_classes`."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if not member.isfile():
                continue
            if path.parent != RESULTS_DIR or path.suffix != ".png" or path.stem not in images:
                problems.append(f"{member.name}: not a test id's mask under {RESULTS_DIR}/")
                continue
            seen[path.stem] = seen.get(path.stem, 0) + 1
            with Image.open(tar.extractfile(member)) as mask, Image.open(images[path.stem]) as image:
                if mask.mode != "P":
                    problems.append(f"{member.name}: a {mask.mode} PNG; expected a palette (P) PNG of class indices")
                if mask.size != image.size:
                    problems.append(f"{member.name}: {mask.size[0]}×{mask.size[1]}, its image is "
                                    f"{image.size[0]}×{image.size[1]}")
                low, high = mask.getextrema()
                if high >= num_classes:
                    problems.append(f"{member.name}: class index {high}; expected 0…{num_classes - 1}")
    missing = [i for i in images if i not in seen]
    if missing:
        problems.append(f"{len(missing)} test ids have no mask, e.g. {missing[0]}")
    problems += [f"{i}: {n} masks" for i, n in seen.items() if n > 1]
    return problems


def upload_instructions(archive: Path, count: int) -> str:
    return (f"{archive}: {count} masks, checked. Upload it at {VOC_SERVER} (log in, 'Submit results', "
            "VOC2012, Segmentation, comp6): the server scores mIoU over the 21 classes and allows few submissions "
            "— choose the model on val first.")
