"""The paper's evaluation protocol: full image on an aligned canvas, optional multi-scale inputs and
left-right flips, softmax probabilities averaged over all of them (DeepLabv3 §4.2, official
`predict_labels_multi_scale`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .components.protocol import EvalProtocol, scale_dimension


def predict_probabilities(net: nn.Module, images: torch.Tensor, protocol: EvalProtocol) -> torch.Tensor:
    """B×C×H×W class probabilities at the input size; `images` normalised, `protocol` resolved."""
    h, w = images.shape[-2:]
    ch, cw = protocol.canvas_size(h, w)
    canvas = F.pad(images, (0, cw - w, 0, ch - h))  # 0 = the mean pixel after normalisation
    total, count = None, 0
    for scale in protocol.scales:
        x = canvas
        if scale != 1.0:
            size = (scale_dimension(ch, scale), scale_dimension(cw, scale))
            x = F.interpolate(canvas, size=size, mode="bilinear", align_corners=True)
        for flipped in (False, True) if protocol.flip else (False,):
            logits = net(x.flip(-1) if flipped else x)
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (ch, cw):
                logits = F.interpolate(logits, size=(ch, cw), mode="bilinear", align_corners=True)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    return (total / count)[..., :h, :w]
