"""Atrous Spatial Pyramid Pooling with image pooling (DeepLabv3 §3.3, official `model.py`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU, conv3x3, official_conv_names, set_dilation
from .official import Official, OfficialNames, prefixed

#: the paper's rates at output stride 16; they scale as 16 / output_stride
DEFAULT_ATROUS_RATES = (6, 12, 18)


def rates_for_output_stride(rates_at_os16: Sequence[int], output_stride: int) -> list[int]:
    """(6, 12, 18) at 16 → (12, 24, 36) at 8 and (3, 6, 9) at 32."""
    scaled = [r * 16 / output_stride for r in rates_at_os16]
    if any(s != int(s) or s < 1 for s in scaled):
        raise ValueError(f"atrous rates {list(rates_at_os16)} (at output stride 16) do not scale to output stride "
                         f"{output_stride} as whole numbers ≥ 1")
    return [int(s) for s in scaled]


class ImagePooling(nn.Module):
    """Global average pool → 1×1 conv + BN + ReLU → bilinear upsample (the image-level feature)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.project[1]
        if self.training and bn.training and x.shape[0] == 1:
            raise ValueError(
                "training with batch size 1: the BatchNorm after ASPP image pooling sees one value per channel "
                "and cannot compute batch statistics. Use a batch of at least 2 per device, or freeze "
                "BatchNorm (SegmentationModule freeze_bn=True), or call model.eval()."
            )
        y = self.project(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """1×1 branch, one 3×3 atrous branch per rate, image pooling; concat → 1×1 projection → dropout.

    `atrous_rates` are given at output stride 16 and follow the output stride (`set_output_stride`);
    an empty list gives the MobileNetV2 head (1×1 + image pooling only). `separable` uses depthwise-
    separable atrous branches with BN + ReLU between depthwise and pointwise (paper Table 5 "SC").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        atrous_rates: Sequence[int] = DEFAULT_ATROUS_RATES,
        output_stride: int = 16,
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.atrous_rates = tuple(atrous_rates)
        rates = rates_for_output_stride(self.atrous_rates, output_stride)
        self.conv1x1 = ConvBNReLU(in_channels, out_channels, 1)
        self.atrous = nn.ModuleList(conv3x3(in_channels, out_channels, r, separable) for r in rates)
        self.image_pooling = ImagePooling(in_channels, out_channels) if image_pooling else None
        n_branches = 1 + len(rates) + int(image_pooling)
        self.project = ConvBNReLU(n_branches * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = out_channels

    def set_output_stride(self, output_stride: int) -> None:
        for branch, rate in zip(self.atrous, rates_for_output_stride(self.atrous_rates, output_stride)):
            set_dilation(branch, rate)

    @property
    def rates(self) -> list[int]:
        return [branch[0].dilation[0] for branch in self.atrous]

    def official_names(self) -> OfficialNames:
        """`aspp0` (1×1), `aspp1…` (atrous), `image_pooling`, `concat_projection`. The official concat puts the
        image-pooling feature first, ours last: its block of `concat_projection`'s input channels moves."""
        names = prefixed("conv1x1.", official_conv_names(self.conv1x1, "aspp0"))
        for i, branch in enumerate(self.atrous):
            names |= prefixed(f"atrous.{i}.", official_conv_names(branch, f"aspp{i + 1}"))
        if self.image_pooling is not None:
            names |= prefixed("image_pooling.project.", official_conv_names(self.image_pooling.project, "image_pooling"))
        names |= prefixed("project.", official_conv_names(self.project, "concat_projection"))
        if self.image_pooling is not None:
            width = self.out_channels
            kernel = names["project.0.weight"].name
            names["project.0.weight"] = Official(kernel, lambda w: torch.cat([w[:, width:], w[:, :width]], dim=1))
        return names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv1x1(x), *(branch(x) for branch in self.atrous)]
        if self.image_pooling is not None:
            branches.append(self.image_pooling(x))
        return self.dropout(self.project(torch.cat(branches, dim=1)))
