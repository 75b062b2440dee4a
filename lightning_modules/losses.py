"""The official training loss switches: hard-pixel mining (`top_k_percent_pixels` with the
`hard_example_mining_step` ramp) and per-class label weights, as the official
`add_softmax_cross_entropy_loss_for_each_scale` (research/deeplab/utils/train_utils.py) computes them.

All three are off by default: the paper's VOC protocol trains on the plain mean cross-entropy over the
labelled pixels, and with no switch set `segmentation_loss` is exactly that (`F.cross_entropy`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def kept_pixels(num_pixels: int, top_k_percent_pixels: float, hard_example_mining_step: int, step: int) -> int:
    """How many pixels the loss keeps at `step`, rounded as the official code does: in float32, then
    truncated (`tf.to_int32`). With a ramp the kept fraction goes linearly from 1 (step 0) to
    `top_k_percent_pixels` (step `hard_example_mining_step` and after). `num_pixels` counts every pixel of
    the batch, ignored ones included — as the official code counts them (they have zero loss, so they
    are only ever kept once every labelled pixel is, and never count in the average)."""
    p, n = np.float32(top_k_percent_pixels), np.float32(num_pixels)
    if hard_example_mining_step == 0:
        return int(p * n)
    ratio = np.minimum(np.float32(1.0), np.float32(step) / np.float32(hard_example_mining_step))
    return int((ratio * p + (np.float32(1.0) - ratio)) * n)


def pixel_weights(masks: torch.Tensor, ignore_index: int, label_weights: torch.Tensor | None) -> torch.Tensor:
    """The weight of every pixel: its class's weight (1 without `label_weights`), 0 for ignored pixels
    (the official `get_label_weight_mask`)."""
    valid = masks != ignore_index
    if label_weights is None:
        return valid.float()
    return torch.where(valid, label_weights.to(masks.device)[torch.where(valid, masks, 0)], 0.0)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int,
                      label_weights: torch.Tensor | None = None, top_k_percent_pixels: float = 1.0,
                      hard_example_mining_step: int = 0, step: int = 0) -> torch.Tensor:
    """Softmax cross-entropy of B×C×H×W logits against B×H×W masks, the official way.

    - No hard-pixel mining (`top_k_percent_pixels` 1): Σ weight · loss over the batch / the number of
      labelled pixels. With `label_weights` this is not PyTorch's weighted mean (which divides by Σ weight):
      the official code divides by the pixel count.
    - Hard-pixel mining: the `kept_pixels` largest weighted pixel losses of the batch, summed and divided by
      how many of them are non-zero (the official `num_present`). The branch is chosen by
      `top_k_percent_pixels`, not by the ramped fraction: at step 0 of a ramp all pixels are kept but the
      divisor is still the non-zero count, as in the official code.
    """
    if label_weights is None and top_k_percent_pixels == 1.0:  # the paper's loss, PyTorch's fused kernel
        # summed and divided by the labelled pixels, at least 1: the mean, but 0 (not NaN) for a batch whose
        # crops hold no labelled pixel (all 255), which would otherwise poison the weights
        labelled = (masks != ignore_index).sum().clamp(min=1)
        return F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="sum") / labelled
    weights = pixel_weights(masks, ignore_index, label_weights)
    losses = F.cross_entropy(logits.float(), torch.where(masks == ignore_index, 0, masks), reduction="none")
    weighted = (losses * weights).flatten()
    if top_k_percent_pixels == 1.0:
        total, present = weighted.sum(), (masks != ignore_index).sum().float()
    else:
        k = kept_pixels(weighted.numel(), top_k_percent_pixels, hard_example_mining_step, step)
        hardest = weighted.topk(k, sorted=False).values
        total, present = hardest.sum(), (hardest != 0).sum().float()
    return (present > 0).float() * total / present.clamp(min=1e-5)


def median_frequency_weights(pixels: Sequence[int], image_pixels: Sequence[int]) -> list[float]:
    """Median frequency balancing (Eigen & Fergus, ICCV 2015): freq(c) = pixels of class c / pixels of the
    images where c appears, weight(c) = median(freq) / freq(c). A class absent from every mask gets weight
    1 (it never meets the loss) and does not enter the median."""
    pixels_a, image_pixels_a = np.asarray(pixels, dtype=np.float64), np.asarray(image_pixels, dtype=np.float64)
    present = image_pixels_a > 0
    if not present.any():
        return [1.0] * len(pixels_a)
    freq = np.where(present, pixels_a / np.maximum(image_pixels_a, 1), 0.0)
    median = float(np.median(freq[present]))
    return [float(median / f) if f > 0 else 1.0 for f in freq]
