"""Conv + BN + ReLU building blocks shared by ASPP and decoder."""
from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """Padding is symmetric, (k − 1)·rate / 2 per side: TF's `SAME` at stride 1 and TF-slim's `conv2d_same`
    (explicit symmetric padding) at stride 2, whatever the input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 stride: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=padding, dilation=dilation,
                      bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """TF's `split_separable_conv2d`: 3×3 depthwise → BN + ReLU → 1×1 pointwise → BN + ReLU (Table 5 "SC")."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            ConvBNReLU(in_channels, out_channels, 1),
        )


def conv3x3(in_channels: int, out_channels: int, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation)


def set_dilation(block: nn.Sequential, dilation: int) -> None:
    """Set the rate of a block made by `conv3x3`, in place."""
    conv = block[0]
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)
