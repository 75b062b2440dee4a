"""Backbones by name. Each returns {"stride4", "stride8", "out"} features (see `base.Backbone`)."""
from __future__ import annotations

from collections.abc import Sequence

from .base import Backbone, OUTPUT_STRIDES
from .mobilenet import MobileNetV2Backbone
from .resnet import ResNetBackbone
from .resnet_beta import ResNetBetaBackbone
from .xception import XceptionBackbone

BACKBONES = ("resnet50", "resnet101", "resnet50_beta", "resnet101_beta", "xception65", "mobilenet_v2")


def build_backbone(name: str, weights: str | None = None, multi_grid: Sequence[int] | None = None,
                   official_layers: bool = False) -> Backbone:
    if official_layers and name != "mobilenet_v2":
        raise ValueError(f"official_layers changes only mobilenet_v2; {name!r} already computes as the official "
                         "network (README Fidelity)")
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(int(name[len("resnet"):]), weights=weights, multi_grid=multi_grid)
    if name in ("resnet50_beta", "resnet101_beta"):
        return ResNetBetaBackbone(int(name[len("resnet"):-len("_beta")]), weights=weights, multi_grid=multi_grid)
    if multi_grid:
        raise ValueError(f"multi_grid is only supported for ResNet backbones, not {name!r}")
    if name == "xception65":
        return XceptionBackbone(weights=weights)
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(weights=weights, official_layers=official_layers)
    raise ValueError(f"unknown backbone {name!r}: expected one of {BACKBONES}")


__all__ = ["Backbone", "BACKBONES", "OUTPUT_STRIDES", "build_backbone"]
