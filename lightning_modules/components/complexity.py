"""Parameters and Multiply-Adds counted the paper's way: 513×513 input, the whole evaluation protocol.

The count runs on the `meta` device with `torch.utils.flop_counter`, so it takes seconds and no memory,
whatever the backbone. Multiply-Adds = FLOPs / 2 (the counter counts a multiply-add as two FLOPs).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PAPER_CROP = 513
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def scale_dimension(dim: int, scale: float) -> int:
    """The official code's rounding of a scaled size: int((dim - 1) * scale + 1), 513 → 257 at 0.5."""
    return int((dim - 1) * scale + 1)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_multiply_adds(
    net: nn.Module,
    size: tuple[int, int] = (PAPER_CROP, PAPER_CROP),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> int:
    """Multiply-Adds of one evaluation of `net` on a `size` image with the given scales and flip.

    `net` should live on the meta device (see `build_on_meta`); it is run in eval mode and restored.
    """
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for s in scales:
            h, w = (scale_dimension(d, s) for d in size)
            net(torch.empty(1, 3, h, w, device=device))
    net.train(was_training)
    return counter.get_total_flops() // 2 * (2 if flip else 1)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network without allocating its weights (never downloads weights: call with weights=None)."""
    with torch.device("meta"):
        return build()
