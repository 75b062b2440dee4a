"""Conv + BN + ReLU building blocks shared by ASPP and decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .official import OfficialNames, conv_bn

#: the BatchNorm layers, by torch's public classes (their common base class is private)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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


def official_conv_names(block: nn.Sequential, scope: str, plain_scope: str | None = None) -> OfficialNames:
    """TF-slim's variables of a `ConvBNReLU` or `conv3x3` block: `<scope>_depthwise` + `<scope>_pointwise`
    when separable (`split_separable_conv2d`), else `plain_scope` (default: `scope`)."""
    if isinstance(block, SeparableConvBNReLU):
        return conv_bn("0", "1", f"{scope}_depthwise", depthwise=True) | conv_bn("3.0", "3.1", f"{scope}_pointwise")
    return conv_bn("0", "1", plain_scope or scope)


def set_dilation(block: nn.Sequential, dilation: int) -> None:
    """Set the rate of a block made by `conv3x3`, in place."""
    conv = block[0]
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


class TFSameConv2d(nn.Conv2d):
    """A 3×3 conv with TF's `padding='SAME'` when it strides by 2: total padding 1 at an even size (none before,
    one after), 2 at an odd size (one each side), i.e. the last pixel is always a kernel centre. PyTorch's
    symmetric padding anchors the first pixel instead, so the layer runs the symmetric conv on the flipped
    image with the flipped kernel and flips back: the same numbers as TF, with no branch on the input size
    (torch.export and dynamic shapes). At stride 1 (`set_output_stride`) both paddings agree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        return F.conv2d(x.flip(-2, -1), self.weight.flip(-2, -1), self.bias, self.stride, self.padding,
                        self.dilation, self.groups).flip(-2, -1)

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "TFSameConv2d":
        """The same conv, same parameters, TF's padding."""
        if conv.kernel_size != (3, 3) or conv.stride != (2, 2) or conv.dilation != (1, 1):
            raise ValueError(f"TFSameConv2d is for 3×3 convs of stride 2, got {conv}")
        new = cls(conv.in_channels, conv.out_channels, 3, 2, 1, 1, conv.groups, conv.bias is not None)
        new.load_state_dict(conv.state_dict())
        return new


class TFSameMaxPool2d(nn.MaxPool2d):
    """`max_pool2d(3, stride=2, padding='SAME')` of TF, as `TFSameConv2d` does it: the last pixel is a centre."""

    def __init__(self) -> None:
        super().__init__(3, 2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flip(-2, -1)).flip(-2, -1)
