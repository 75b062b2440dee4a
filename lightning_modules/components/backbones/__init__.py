"""Backbones by name. Each returns {"stride4", "stride8", "out"} features (see `base.Backbone`)."""
from __future__ import annotations

from collections.abc import Sequence

from .base import Backbone, OUTPUT_STRIDES, is_weights_file, torchvision_weights
from .mobilenet import MobileNetV2Backbone
from .resnet import ResNetBackbone
from .resnet_beta import ResNetBetaBackbone
from .xception import XceptionBackbone

BACKBONES = ("resnet50", "resnet101", "resnet50_beta", "resnet101_beta", "xception65", "xception71",
             "mobilenet_v2")


def build_backbone(name: str, weights: str | None = None, multi_grid: Sequence[int] | None = None,
                   official_layers: bool = False) -> Backbone:
    if official_layers and name != "mobilenet_v2":
        raise ValueError(f"official_layers changes only mobilenet_v2; {name!r} already computes as the official "
                         "network (docs/fidelity.md)")
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(int(name[len("resnet"):]), weights=weights, multi_grid=multi_grid)
    if name in ("resnet50_beta", "resnet101_beta"):
        return ResNetBetaBackbone(int(name[len("resnet"):-len("_beta")]), weights=weights, multi_grid=multi_grid)
    if multi_grid:
        raise ValueError(f"multi_grid is only supported for ResNet backbones, not {name!r}")
    if name in ("xception65", "xception71"):
        return XceptionBackbone(weights=weights, depth=int(name[len("xception"):]))
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(weights=weights, official_layers=official_layers)
    raise ValueError(f"unknown backbone {name!r}: expected one of {BACKBONES}")


class WeightsUnavailable(ValueError):
    """Named weights that cannot be had on this machine; the message says how to give a local file."""


def fetch_weights(name: str, weights: str | None) -> None:
    """Bring the named ImageNet weights of backbone `name` into the library's cache (torchvision's hub
    directory, timm's Hugging Face cache) now, so that a machine without internet or a tag that does not
    exist is found before a run starts rather than deep inside the network's constructor. No weights or a
    local file: nothing to fetch. WeightsUnavailable names the cause and the local-file way."""
    if not weights or is_weights_file(weights):
        return
    if name.endswith("_beta"):
        raise WeightsUnavailable(f"{name} has no weights by name ({weights!r}); expected a file "
                                 "(experiments.import_official writes one from the official TF checkpoint)")
    timm_model = name.startswith("xception")
    if timm_model:
        import timm

        tags = [model.split(".", 1)[1] for model in timm.list_pretrained(f"{name}.*")]
        if weights not in tags:
            raise WeightsUnavailable(f"unknown {name} weights {weights!r}: expected one of {', '.join(tags)}, "
                                     "or a path to a saved state dict")
        library = f'timm.create_model("{name}.{weights}", pretrained=True)'
    else:
        from torchvision.models import get_model_weights

        member = torchvision_weights(name, weights, get_model_weights(name))  # ValueError for an unknown name
        library = f'torchvision.models.{name}(weights="{weights}")'
    try:
        if timm_model:
            timm.create_model(f"{name}.{weights}", pretrained=True, num_classes=0)
        else:
            member.get_state_dict(progress=False)
    except Exception as e:  # urllib, huggingface_hub and hash errors: each means "not here"
        cause = " ".join(str(e).split())[:200]
        raise WeightsUnavailable(
            f"cannot download {name} weights {weights!r} ({type(e).__name__}: {cause}); on a machine with internet "
            f'save them with torch.save({library}.state_dict(), "{name}.pth") and give that file instead') from None


__all__ = ["Backbone", "BACKBONES", "OUTPUT_STRIDES", "WeightsUnavailable", "build_backbone", "fetch_weights"]
