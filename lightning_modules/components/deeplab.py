"""DeepLabV3+ = backbone → ASPP → decoder → 1×1 classifier → bilinear upsampling to the input size."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aspp import ASPP, DEFAULT_ATROUS_RATES
from .backbones import build_backbone
from .decoder import Decoder
from .official import OfficialNames, conv, prefixed


class DeepLabV3Plus(nn.Module):
    """Every row of the paper's Tables 1, 2, 3 and 5 is a setting of this constructor.

    Args:
        backbone: one of `backbones.BACKBONES` ("resnet101", "xception65", "xception71", "mobilenet_v2", …).
        num_classes: 21 for PASCAL VOC.
        output_stride: 8, 16 or 32; change it later with `set_output_stride` (train 16, eval 8).
        weights: backbone ImageNet weights, by name (torchvision enum, timm tag) or a local file.
        multi_grid: unit rates of ResNet's last stage, e.g. (1, 2, 4); off in the paper's v3+ runs.
        atrous_rates: ASPP rates at output stride 16 (scaled with the output stride); [] = no atrous
            branches (the official MobileNetV2 head).
        aspp_separable / decoder_separable: depthwise-separable convs (Table 5 "SC").
        image_pooling: ASPP image-level feature branch.
        aspp_channels: ASPP width (256).
        dropout: after the ASPP projection (0.1, official code).
        decoder: refinement after concatenation, e.g. "3x3:256,3x3:256" (default), "3x3:256", "1x1:256";
            "none" gives DeepLabV3 (logits from the encoder).
        decoder_projection: width of the low-level 1×1 projection (Table 1).
        decoder_low_level: "conv2" or "conv2+conv3" (Table 2).
        official_layers: mobilenet_v2 computes as TF-slim's (BN ε 1e-3, `SAME` stride-2 padding), as the
            official checkpoints need (`experiments.import_official` sets it; docs/fidelity.md).
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        num_classes: int = 21,
        output_stride: int = 16,
        weights: str | None = None,
        multi_grid: Sequence[int] | None = None,
        atrous_rates: Sequence[int] = DEFAULT_ATROUS_RATES,
        aspp_separable: bool = False,
        image_pooling: bool = True,
        aspp_channels: int = 256,
        dropout: float = 0.1,
        decoder: str = "3x3:256,3x3:256",
        decoder_projection: int = 48,
        decoder_low_level: str = "conv2",
        decoder_separable: bool = False,
        official_layers: bool = False,
    ) -> None:
        super().__init__()
        #: constructor arguments, so the cost counter can rebuild this network on the meta device
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.backbone = build_backbone(backbone, weights=weights, multi_grid=multi_grid,
                                       official_layers=official_layers)
        self.aspp = ASPP(self.backbone.channels["out"], aspp_channels, atrous_rates, output_stride,
                         separable=aspp_separable, image_pooling=image_pooling, dropout=dropout)
        self.decoder = None
        head_channels = aspp_channels
        if decoder != "none":
            self.decoder = Decoder(aspp_channels, self.backbone.channels, decoder_projection, decoder,
                                   decoder_low_level, decoder_separable)
            head_channels = self.decoder.out_channels
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # official: truncated normal, stddev 0.01
        nn.init.zeros_(self.classifier.bias)
        self.set_output_stride(output_stride)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def head_stride(self) -> int:
        """Stride of the logits before upsampling: 4 with the decoder, else the output stride."""
        return self.output_stride if self.decoder is None else 4

    @property
    def normalization(self) -> str:
        """Input normalisation the backbone's ImageNet weights expect ("imagenet" or "inception")."""
        return self.backbone.normalization

    def set_output_stride(self, output_stride: int) -> None:
        """Change strides, dilations and ASPP rates in place; parameters are untouched (paper Table 3)."""
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_output_stride(output_stride)

    def official_names(self) -> OfficialNames:
        """Every tensor of ours → the official TF DeepLab variable it is filled from (`experiments.import_official`);
        each part maps its own layers, beside the layers."""
        names = prefixed("backbone.", self.backbone.official_names())
        names |= prefixed("aspp.", self.aspp.official_names())
        if self.decoder is not None:
            names |= prefixed("decoder.", self.decoder.official_names())
        return names | conv("classifier", "logits/semantic", bias=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the head's stride (4 with the decoder), before upsampling: the official graph's
        merged logits."""
        features = self.backbone(x)
        y = self.aspp(features["out"])
        if self.decoder is not None:
            y = self.decoder(y, features)
        return self.classifier(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.logits(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
