"""Counting aid: the official "ResNet-101 beta" layout (tensorflow/models `deeplab/core/resnet_v1_beta.py`),
built for Multiply-Adds only — there are no PyTorch weights for it and nothing here trains it.

It differs from torchvision's ResNet (`resnet.py`, what we train) in two places:

* stem: three 3×3 convs (64 stride 2, 64, 128) instead of one 7×7 (64 stride 2), then the same max pool;
* stride placement: blocks 1–3 stride in their *last* unit (whose shortcut is a 1×1 max-pool "subsample"),
  not in the first unit of stages 2–4; so the units before a stride run at twice the resolution, and the
  first unit of every block has its projection shortcut at stride 1.

The stride-4 tap is `block1/unit_2` (before block 1 strides) and the stride-8 tap `block2/unit_3`, as in the
official `feature_extractor.py`. `experiments.complexity --paper-tables` counts it to say how much of the
gap between our ResNet-101 rows and the paper's Table 3 is this layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from .resnet import ResNetBackbone

#: (bottleneck width, stride of the block's last unit) per block, `resnet_v1_101_beta`
_BLOCKS = ((64, 2), (128, 2), (256, 2), (512, 1))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ResNetBetaLayout(ResNetBackbone):
    """The beta layout with `ResNetBackbone`'s unit depths, output-stride logic and taps."""

    def __init__(self, depth: int = 101, multi_grid: Sequence[int] | None = None) -> None:
        super().__init__(depth, weights=None, multi_grid=multi_grid)
        b = self.body
        stem = [*_conv_bn_relu(3, 64, 2), *_conv_bn_relu(64, 64), nn.Conv2d(64, 128, 3, 1, 1, bias=False)]
        b.conv1 = nn.Sequential(*stem)  # then the existing bn1, ReLU and max pool
        b.bn1 = nn.BatchNorm2d(128)
        channels = 128
        for layer, (width, stride) in zip(("layer1", "layer2", "layer3", "layer4"), _BLOCKS):
            n, units = len(getattr(b, layer)), []
            for i in range(n):
                unit_stride = stride if i == n - 1 else 1
                shortcut = None
                if channels != 4 * width:
                    shortcut = nn.Sequential(nn.Conv2d(channels, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width))
                elif unit_stride > 1:
                    shortcut = nn.Sequential(nn.MaxPool2d(1, unit_stride))
                units.append(Bottleneck(channels, width, unit_stride, shortcut))
                channels = 4 * width
            setattr(b, layer, nn.Sequential(*units))
        self.units = [(unit, unit.stride) for layer in self._layers() for unit in layer]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        stride4 = b.layer1[:-1](x)
        stride8 = b.layer2[:-1](b.layer1[-1](stride4))
        out = b.layer4(b.layer3(b.layer2[-1](stride8)))
        return {"stride4": stride4, "stride8": stride8, "out": out}


def use_resnet_beta_layout(net: nn.Module) -> None:
    """Replace a `DeepLabV3Plus`'s ResNet backbone by the beta layout (same depth, multi-grid and output
    stride), on the network's device — the meta device, for counting."""
    old = net.backbone
    if not isinstance(old, ResNetBackbone):
        raise ValueError(f"the ResNet beta layout replaces a ResNet backbone, not {type(old).__name__}")
    with torch.device(next(net.parameters()).device):
        net.backbone = ResNetBetaLayout(int(net.config["backbone"].removeprefix("resnet")), old.multi_grid)
    net.backbone.set_output_stride(old.output_stride)
