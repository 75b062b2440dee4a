"""The DeepLabV3+ decoder and its ablation variants (paper §3.1, §4.1, Tables 1 and 2)."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU, conv3x3, official_conv_names
from .official import OfficialNames, prefixed

LOW_LEVEL_OPTIONS = {"conv2": ("stride4",), "conv2+conv3": ("stride8", "stride4")}
_LAYER = re.compile(r"^(1x1|3x3):(\d+)$")


def parse_refine(spec: str) -> list[tuple[int, int]]:
    """"3x3:256,3x3:256" → [(3, 256), (3, 256)]: the convs after concatenation, as in paper Table 2."""
    layers = []
    for item in spec.replace(" ", "").split(","):
        match = _LAYER.match(item)
        if not match:
            raise ValueError(f"decoder refine spec {spec!r}: {item!r} is not of the form '3x3:256' or '1x1:256'")
        layers.append((int(match.group(1)[0]), int(match.group(2))))
    return layers


class DecoderStage(nn.Module):
    """Upsample to the low-level feature's size, concat its 1×1 projection, refine."""

    def __init__(self, in_channels: int, low_level_channels: int, projection_channels: int,
                 refine: list[tuple[int, int]], separable: bool) -> None:
        super().__init__()
        self.project = ConvBNReLU(low_level_channels, projection_channels, 1)
        layers, channels = [], in_channels + projection_channels
        for kernel, width in refine:
            layers.append(conv3x3(channels, width, 1, separable) if kernel == 3 else ConvBNReLU(channels, width, 1))
            channels = width
        self.refine = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=True)
        return self.refine(torch.cat([x, self.project(low_level)], dim=1))


class Decoder(nn.Module):
    """`low_level="conv2"`: one stage at stride 4 (the paper's choice). `"conv2+conv3"`: upsample by 2 at
    a time, Conv3 (stride 8) first and then Conv2 (stride 4), each refined by `refine` (Table 2 last row).

    `projection_channels` is the width of the 1×1 low-level projection (Table 1: 8…64, default 48).
    """

    def __init__(self, in_channels: int, low_level_channels: dict[str, int], projection_channels: int = 48,
                 refine: str = "3x3:256,3x3:256", low_level: str = "conv2", separable: bool = False) -> None:
        super().__init__()
        if low_level not in LOW_LEVEL_OPTIONS:
            raise ValueError(f"decoder low_level must be one of {list(LOW_LEVEL_OPTIONS)}, got {low_level!r}")
        self.taps = LOW_LEVEL_OPTIONS[low_level]
        layers = parse_refine(refine)
        self.stages = nn.ModuleList()
        for tap in self.taps:
            stage = DecoderStage(in_channels, low_level_channels[tap], projection_channels, layers, separable)
            self.stages.append(stage)
            in_channels = stage.out_channels
        self.out_channels = in_channels

    def official_names(self) -> OfficialNames:
        """`decoder/feature_projection0`, then `decoder_conv{i}_depthwise/_pointwise` (separable) or
        `decoder_conv0/decoder_conv0_{i+1}` (plain 3×3, TF-slim's `repeat`). The official decoder has no
        1×1 refinement and one stage per output stride; only the paper's choice (Conv2) is mapped here."""
        if self.taps != LOW_LEVEL_OPTIONS["conv2"]:
            raise ValueError("the official decoder layout is mapped for decoder_low_level='conv2' only")
        stage = self.stages[0]
        names = prefixed("stages.0.project.", official_conv_names(stage.project, "feature_projection0"))
        for i, layer in enumerate(stage.refine):
            if layer[0].kernel_size == (1, 1):
                raise ValueError("the official decoder has no 1×1 refinement convs (decoder='1x1:…')")
            names |= prefixed(f"stages.0.refine.{i}.",
                              official_conv_names(layer, f"decoder_conv{i}", f"decoder_conv0/decoder_conv0_{i + 1}"))
        return prefixed("", names, "decoder/")

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        for tap, stage in zip(self.taps, self.stages):
            x = stage(x, features[tap])
        return x
