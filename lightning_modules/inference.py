"""The paper's evaluation protocol: full image, optional multi-scale inputs and left-right flips,
softmax probabilities averaged over all of them (DeepLabv3 §4.2, official `predict_labels_multi_scale`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .components.protocol import scale_dimension


def predict_probabilities(net: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                          flip: bool = False) -> torch.Tensor:
    """B×C×H×W class probabilities at the input size."""
    h, w = images.shape[-2:]
    total, count = None, 0
    for scale in scales:
        x = images
        if scale != 1.0:
            size = (scale_dimension(h, scale), scale_dimension(w, scale))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        for flipped in (False, True) if flip else (False,):
            logits = net(x.flip(-1) if flipped else x)
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    return total / count
