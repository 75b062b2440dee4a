"""`model.label_weights: median_frequency`: class weights from the training split's masks, computed once
and cached beside the data (a VOC train_aug pass reads 10,582 files; later runs read one JSON file).

The cache is keyed by the split, the class count and every mask's path, size and modification time: a
changed, added or removed mask recomputes it. A dataset folder this process cannot write to is counted
every run (one warning says so).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from .losses import median_frequency_weights


def cache_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"label_weights_median_frequency_{split}.json"


def _signature(samples, num_classes: int) -> str:
    digest = hashlib.sha1(str(num_classes).encode())
    for sample in samples:
        stat = Path(sample.mask).stat()
        digest.update(f"{sample.mask}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def count_classes(samples, decode, num_classes: int, ignore_index: int) -> tuple[list[int], list[int]]:
    """(pixels of each class, pixels of the images each class appears in) over `samples`, read with the
    layout's own decoder (so Cityscapes ids are mapped to train ids as in training); ignored pixels count
    in neither."""
    pixels = torch.zeros(num_classes, dtype=torch.long)
    image_pixels = torch.zeros(num_classes, dtype=torch.long)
    for sample in tqdm(samples, desc="median frequency", unit="mask", file=sys.stderr, mininterval=1.0):
        _, mask = decode(sample)
        counts = torch.bincount(mask.flatten().long(), minlength=256)
        counts[ignore_index] = 0
        counts = counts[:num_classes]
        pixels += counts
        image_pixels += (counts > 0).long() * int(counts.sum())
    return pixels.tolist(), image_pixels.tolist()


def median_frequency(datamodule) -> list[float]:
    """The training split's median-frequency class weights, from the cache when the masks have not changed."""
    split = datamodule.hparams.train_split
    labels = datamodule.labels
    samples = datamodule.list_samples(split)
    signature = _signature(samples, labels.num_classes)
    path = cache_path(datamodule.root, split)
    try:
        cached = json.loads(path.read_text())
        if cached.get("signature") == signature:
            return [float(w) for w in cached["weights"]]
    except (OSError, ValueError, KeyError):
        pass
    pixels, image_pixels = count_classes(samples, datamodule.decoder(), labels.num_classes, labels.ignore_index)
    weights = median_frequency_weights(pixels, image_pixels)
    record = {"split": split, "signature": signature, "class_names": list(labels.class_names),
              "weights": weights, "pixels": pixels, "image_pixels": image_pixels}
    try:  # atomic: processes of a DDP run may write it at the same time
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"{path}: cannot cache the median-frequency weights ({e}); they are counted again next run")
    return weights
