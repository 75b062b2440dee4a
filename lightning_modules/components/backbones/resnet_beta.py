"""The official "ResNet-v1 beta" (tensorflow/models `deeplab/core/resnet_v1_beta.py`): the ResNet the paper's
Table 3 trains, whose ImageNet weights exist only as TF checkpoints (`experiments.import_official`).

It differs from torchvision's ResNet (`resnet.py`) in three places:

* stem: three 3×3 convs (64 stride 2, 64, 128), each with BN + ReLU, instead of one 7×7, then a 3×3 max pool
  with TF's `SAME` padding (at an even size: nothing before, one after);
* stride placement: blocks 1–3 stride in their *last* unit, whose shortcut is a 1×1 max pool ("subsample"),
  so the first unit of every block has its projection shortcut at stride 1;
* decoder taps: the official low-level features are `block1/unit_2/bottleneck_v1/conv3` and
  `block2/unit_3/.../conv3` — the third conv's BN output of the unit before the block strides, *before*
  the residual add and ReLU.

Inputs are in [-1, 1] (`_preprocess_zero_mean_unit_range`), BN ε 1e-5 and decay 0.95, as the official code.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from ..layers import ConvBNReLU, TFSameMaxPool2d
from ..official import OfficialNames, batch_norm, conv, conv_bn, prefixed
from .base import is_weights_file
from .resnet import ResNetBackbone

#: units per block; the bottleneck widths are 64, 128, 256, 512 and blocks 1–3 stride 2 in their last unit
_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_WIDTHS = (64, 128, 256, 512)
_TAP_BLOCKS = {"stride4": 0, "stride8": 1}


class ResNetBetaBackbone(ResNetBackbone):
    """`resnet50_beta` / `resnet101_beta`. Output stride, multi-grid and stride logic are `ResNetBackbone`'s
    (the units are torchvision `Bottleneck`s); taps are read inside the unit before each stride.

    `weights`: a path to a state dict of this backbone's `body` (ImageNet weights come from the official
    checkpoint: `python -m experiments.import_official resnet_v1_101_2018_05_04.tar.gz`, then
    `--model.init_from` the file it writes).
    """

    normalization = "inception"

    def __init__(self, depth: int = 101, weights: str | None = None, multi_grid: Sequence[int] | None = None) -> None:
        nn.Module.__init__(self)
        if depth not in _UNITS:
            raise ValueError(f"ResNet beta depth must be 50 or 101, got {depth}")
        self.depth = depth
        self.units: list[tuple[nn.Module, int]] = []
        self.output_stride = 32
        self.body = nn.Module()
        self.body.stem = nn.Sequential(ConvBNReLU(3, 64, 3, stride=2), ConvBNReLU(64, 64, 3), ConvBNReLU(64, 128, 3))
        self.body.maxpool = TFSameMaxPool2d()
        channels = 128
        for b, (n, width) in enumerate(zip(_UNITS[depth], _WIDTHS)):
            units = []
            for i in range(n):
                stride = 2 if i == n - 1 and b < 3 else 1
                shortcut = None
                if channels != 4 * width:
                    shortcut = nn.Sequential(nn.Conv2d(channels, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width))
                elif stride > 1:
                    shortcut = nn.Sequential(nn.MaxPool2d(1, stride))
                units.append(Bottleneck(channels, width, stride, shortcut))
                channels = 4 * width
            setattr(self.body, f"layer{b + 1}", nn.Sequential(*units))
        if weights:
            if not is_weights_file(weights):
                raise ValueError(f"resnet{depth}_beta has no weights by name ({weights!r}): import the official "
                                 "ImageNet checkpoint with experiments.import_official and pass the file it writes "
                                 "as --model.init_from")
            self.load_weights_file(weights)
        self.channels = {"stride4": 256, "stride8": 512, "out": 2048}
        self.units = [(unit, unit.stride) for layer in self._layers() for unit in layer]
        self.multi_grid = tuple(multi_grid) if multi_grid else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.body.maxpool(self.body.stem(x))
        taps = {}
        tap_at = {index: name for name, index in _TAP_BLOCKS.items()}
        for b, layer in enumerate(self._layers()):
            if b in tap_at:
                x = layer[:-2](x)
                x, taps[tap_at[b]] = _bottleneck_with_tap(layer[-2], x)
                x = layer[-1](x)
            else:
                x = layer(x)
        return {**taps, "out": x}

    def official_names(self) -> OfficialNames:
        """Our `body.*` keys → `resnet_v1_{depth}/...` (the beta checkpoints keep the plain ResNet scope)."""
        names: OfficialNames = {}
        for i in range(len(self.body.stem)):
            names |= conv_bn(f"body.stem.{i}.0", f"body.stem.{i}.1", f"conv1_{i + 1}")
        for b, layer in enumerate(self._layers(), start=1):
            for u, unit in enumerate(layer, start=1):
                scope = f"block{b}/unit_{u}/bottleneck_v1"
                unit_names = {}
                for j in (1, 2, 3):
                    unit_names |= conv_bn(f"conv{j}", f"bn{j}", f"/conv{j}")
                if unit.downsample is not None and isinstance(unit.downsample[0], nn.Conv2d):
                    unit_names |= conv("downsample.0", "/shortcut") | batch_norm("downsample.1", "/shortcut/BatchNorm")
                names |= prefixed(f"body.layer{b}.{u - 1}.", unit_names, scope)
        return prefixed("", names, f"resnet_v1_{self.depth}/")


def _bottleneck_with_tap(unit: Bottleneck, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`Bottleneck.forward`, also returning conv3's BN output before the residual add (the official tap)."""
    y = unit.relu(unit.bn1(unit.conv1(x)))
    y = unit.relu(unit.bn2(unit.conv2(y)))
    tap = unit.bn3(unit.conv3(y))
    skip = x if unit.downsample is None else unit.downsample(x)
    return unit.relu(tap + skip), tap
