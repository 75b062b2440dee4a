"""MobileNetV2 from torchvision, DeepLab variant (ends at the 320-channel block)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2, MobileNet_V2_Weights
from torchvision.models.mobilenetv2 import InvertedResidual

from ..layers import TFSameConv2d
from ..official import OfficialNames, batch_norm, conv, conv_bn, prefixed
from .base import Backbone, set_conv_stride, torchvision_weights

# One-based TF layer numbers of the decoder taps: layer_4 (stride 4) and layer_7 (stride 8)
# "depthwise_output" (the official feature_extractor.py); torchvision's `features[i]` is TF's layer_{i+1}.
_TAPS = {"stride4": 3, "stride8": 6}


class MobileNetV2Backbone(Backbone):

    """torchvision MobileNetV2 without its 1280-channel conv (`features[18]`), as the official code.

    Taps are the depthwise outputs of TF's layer_4 (144 ch, stride 4) and layer_7 (192 ch, stride 8);
    the encoder output is the 320-channel block. `weights`: "IMAGENET1K_V1"/"IMAGENET1K_V2" or a path
    to a state dict of `torchvision.models.mobilenet_v2()`.

    `official_layers`: compute as TF-slim's MobileNetV2, which the official checkpoints were trained with:
    BN ε 1e-3 (torchvision's 1e-5) and `SAME` padding of the stride-2 convs (one pixel after, none before, at
    an even size; torchvision pads one on each side). At odd sizes such as 513 only ε differs.
    """

    official_bn_momentum = 0.003  # slim mobilenet training_scope(bn_decay=0.997)

    def __init__(self, weights: str | None = None, official_layers: bool = False) -> None:
        super().__init__()
        enum_weights = torchvision_weights("mobilenet_v2", weights, MobileNet_V2_Weights)
        self.body = mobilenet_v2(weights=enum_weights)
        del self.body.classifier
        self.body.features = self.body.features[:18]
        if weights and enum_weights is None:
            self.load_weights_file(weights, ignore_prefixes=("classifier.", "features.18."))
        self.channels = {"stride4": 144, "stride8": 192, "out": 320}
        self.units = [(block, block.conv[-3][0].stride[0]) for block in self.body.features[1:]]
        if official_layers:
            _use_official_layers(self.body.features)

    def official_names(self) -> OfficialNames:
        """Our `body.features.*` keys → `MobilenetV2/Conv`, `expanded_conv`, `expanded_conv_1` … `_16`, each
        with its `expand` (absent in the first block), `depthwise` and `project` convs."""
        features = self.body.features
        names = conv_bn("0.0", "0.1", "Conv")
        for i in range(1, len(features)):
            layers = list(features[i].conv)
            scopes = ["depthwise"] if len(layers) == 3 else ["expand", "depthwise"]
            unit: OfficialNames = {}
            for j, scope in enumerate(scopes):
                unit |= conv_bn(f"conv.{j}.0", f"conv.{j}.1", f"/{scope}", depthwise=scope == "depthwise")
            project = len(scopes)
            unit |= conv(f"conv.{project}", "/project") | batch_norm(f"conv.{project + 1}", "/project/BatchNorm")
            names |= prefixed(f"{i}.", unit, "expanded_conv" if i == 1 else f"expanded_conv_{i - 1}")
        return prefixed("body.features.", names, "MobilenetV2/")

    @staticmethod
    def set_unit_stride(unit: InvertedResidual, stride: int, dilation: int) -> None:
        set_conv_stride(unit.conv[-3][0], stride, dilation)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        taps = {}
        tap_at = {index: name for name, index in _TAPS.items()}
        for i, layer in enumerate(self.body.features):
            if i in tap_at:
                x, taps[tap_at[i]] = _forward_with_depthwise_tap(layer, x)
            else:
                x = layer(x)
        return {**taps, "out": x}


def _use_official_layers(features: nn.Sequential) -> None:
    for module in list(features.modules()):
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                setattr(module, name, TFSameConv2d.replacing(child))


def _forward_with_depthwise_tap(block: InvertedResidual, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = block.conv[:-2](x)  # expand 1×1 + depthwise 3×3 (each with BN + ReLU6)
    y = block.conv[-2:](hidden)  # linear 1×1 projection + BN
    return (x + y if block.use_res_connect else y), hidden
