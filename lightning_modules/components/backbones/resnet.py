"""ResNet-50/101 from torchvision as a DeepLab encoder."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import Bottleneck

from .base import Backbone, set_conv_stride, torchvision_weights

_BUILDERS = {
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights),
}


class ResNetBackbone(Backbone):
    """torchvision's ResNet (stride in the first unit of a stage, 7×7 stem).

    Taps: stride4 = `layer1` output (256 ch, "Conv2 before striding"), stride8 = `layer2` output (512 ch,
    "Conv3"), out = `layer4` (2048 ch). `weights` is a torchvision enum name such as "IMAGENET1K_V2"
    or a path to a state dict saved from `torchvision.models.resnet101()`.
    """

    stem_stride = 4  # 7×7 conv stride 2 + max pool stride 2
    official_bn_momentum = 0.05  # feature_extractor.py: resnet_arg_scope(batch_norm_decay=0.95)

    def __init__(self, depth: int = 101, weights: str | None = None, multi_grid: Sequence[int] | None = None) -> None:
        super().__init__()
        name = f"resnet{depth}"
        if name not in _BUILDERS:
            raise ValueError(f"ResNet depth must be 50 or 101, got {depth}")
        build, weight_enum = _BUILDERS[name]
        enum_weights = torchvision_weights(name, weights, weight_enum)
        self.body = build(weights=enum_weights)
        del self.body.fc, self.body.avgpool
        if weights and enum_weights is None:
            self.load_weights_file(weights, ignore_prefixes=("fc.",))
        self.channels = {"stride4": 256, "stride8": 512, "out": 2048}
        self.units = [(block, block.stride) for layer in self._layers() for block in layer]
        self.multi_grid = tuple(multi_grid) if multi_grid else None

    def _layers(self) -> list[nn.Sequential]:
        return [self.body.layer1, self.body.layer2, self.body.layer3, self.body.layer4]

    def last_stage_units(self) -> list[int]:
        n = len(self.units)
        return list(range(n - len(self.body.layer4), n))

    @staticmethod
    def set_unit_stride(unit: Bottleneck, stride: int, dilation: int) -> None:
        set_conv_stride(unit.conv2, stride, dilation)
        if unit.downsample is not None:
            unit.downsample[0].stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        stride4 = b.layer1(x)
        stride8 = b.layer2(stride4)
        out = b.layer4(b.layer3(stride8))
        return {"stride4": stride4, "stride8": stride8, "out": out}
