"""Training-augmentation throughput per worker: our v2 pipeline against a straightforward PIL one.

    python -m datamodules.benchmark [--images 40] [--crop 513] [--repeats 3]

Both decode the same generated VOC-size JPEG/PNG pairs and produce uint8 513×513 crops with the
same random scale, pad, crop and flip; one thread, as in one DataLoader worker. Prints images/s and ratio.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from . import synthetic
from .dataset import SegmentationDataset
from .transforms import mean_pixel, train_transform
from .voc import list_split


def pil_pipeline(image_path: Path, mask_path: Path, crop: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, PIL resize (bilinear / nearest), pad, crop, flip, to a uint8 tensor (normalised on the device)."""
    image = Image.open(image_path).convert("RGB")
    mask = Image.open(mask_path)
    s = rng.uniform(0.5, 2.0)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    image, mask = image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)
    pad_w, pad_h = max(crop - size[0], 0), max(crop - size[1], 0)
    if pad_w or pad_h:
        image = ImageOps.expand(image, (0, 0, pad_w, pad_h), fill=tuple(mean_pixel("imagenet")))
        mask = ImageOps.expand(mask, (0, 0, pad_w, pad_h), fill=255)
    x0, y0 = rng.randint(0, image.width - crop), rng.randint(0, image.height - crop)
    image, mask = image.crop((x0, y0, x0 + crop, y0 + crop)), mask.crop((x0, y0, x0 + crop, y0 + crop))
    if rng.random() < 0.5:
        image, mask = ImageOps.mirror(image), ImageOps.mirror(mask)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return x, torch.from_numpy(np.asarray(mask, dtype=np.int64))


def images_per_second(fn, n: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate(tmp, seed=0, n_voc_train=args.images, n_voc_val=1, n_sbd_only=0)
        samples = list_split(root, "train")
        ours = SegmentationDataset(samples, train_transform(args.crop), seed=0)
        rng = random.Random(0)
        pil = images_per_second(lambda i: pil_pipeline(samples[i].image, samples[i].mask, args.crop, rng),
                                len(samples), args.repeats)
        v2 = images_per_second(lambda i: ours[(i, 0)], len(samples), args.repeats)
    print(f"VOC-size images ({len(samples)}), crop {args.crop}, 1 thread (one DataLoader worker)")
    print(f"  PIL pipeline:          {pil:7.1f} images/s")
    print(f"  ours (v2, crop first): {v2:7.1f} images/s")
    print(f"  ratio:                 {v2 / pil:7.2f}x   (target >= 1.5x)")


if __name__ == "__main__":
    main()
