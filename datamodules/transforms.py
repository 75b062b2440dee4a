"""The paper's training augmentation as torchvision v2 transforms on (Image, Mask) pairs."""
from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .reading import IGNORE_INDEX

#: mean/std per backbone weight family; "inception" maps to [-1, 1] as the TF-ported Xception expects
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def mean_pixel(normalization: str) -> list[int]:
    """The uint8 pixel that normalises to 0: the padding colour of images (official code: mean pixel)."""
    return [round(m * 255) for m in NORMALIZATIONS[normalization][0]]


class RandomScaleCrop(v2.Transform):
    """Random scale in [min, max], pad to `crop_size` (bottom/right, mean pixel / 255), random crop.

    The official preprocessing (scale, pad, crop) with the same result, but only the region that survives the
    crop is resized: at scale 2.0 a 500×375 image would otherwise be resized to 1000×750 only to keep
    a 513×513 window. Images are resized bilinearly, masks with pixel-centre nearest neighbour
    (`NEAREST_EXACT`): torchvision's bilinear samples at pixel centres, and so must the mask, or the
    labels shift by half a pixel against their image (v2's mask kernel would use legacy `NEAREST`).
    `scale_step` = 0.25 draws from {0.5, 0.75, …, 2.0} like the official code; None is continuous.
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0),
                 scale_step: float | None = None, image_fill: list[int] | None = None) -> None:
        super().__init__()
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.scale_step = scale_step
        self.fill = {tv_tensors.Image: image_fill or [0, 0, 0], tv_tensors.Mask: IGNORE_INDEX}

    def _draw_scale(self) -> float:
        lo, hi = self.scale_range
        if self.scale_step:
            steps = int(round((hi - lo) / self.scale_step))
            return lo + self.scale_step * int(torch.randint(steps + 1, ()))
        return lo + (hi - lo) * float(torch.rand(()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = self._draw_scale()
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        c = self.crop_size
        y0 = int(torch.randint(max(hs - c, 0) + 1, ()))
        x0 = int(torch.randint(max(ws - c, 0) + 1, ()))
        hv, wv = min(c, hs - y0), min(c, ws - x0)  # the part of the crop window that is image
        top, left = math.floor(y0 / s), math.floor(x0 / s)
        bottom, right = min(h, math.ceil((y0 + hv) / s)), min(w, math.ceil((x0 + wv) / s))
        return dict(scale=s, top=top, left=left, height=bottom - top, width=right - left,
                    size=[hv, wv], padding=[0, 0, c - wv, c - hv])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if type(inpt) not in self.fill:
            return inpt
        region = (params["top"], params["left"], params["height"], params["width"])
        if isinstance(inpt, tv_tensors.Mask):
            out = F.resize(F.crop(inpt, *region), params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        else:
            out = F.resized_crop(inpt, *region, params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=True)
        if any(params["padding"]):  # the functional API dispatches on the tv_tensor type (Image or Mask)
            out = F.pad(out, params["padding"], fill=self.fill[type(inpt)])
        return out


def train_transform(crop_size: int = 513, scale_range: tuple[float, float] = (0.5, 2.0),
                    scale_step: float | None = None, flip_prob: float = 0.5,
                    normalization: str = "imagenet") -> v2.Compose:
    """uint8 crops: a quarter of the bytes of float32 through the loader, pinned memory and the copy to the
    device; `SegmentationModule.on_after_batch_transfer` normalises them there. `normalization` only
    picks the padding colour, the mean pixel, which normalises to 0."""
    return v2.Compose([
        RandomScaleCrop(crop_size, scale_range, scale_step, mean_pixel(normalization)),
        v2.RandomHorizontalFlip(flip_prob),
    ])


def eval_transform() -> v2.Transform:
    """Full image, as decoded (uint8): no resize, no crop (paper: evaluation on the whole val image)."""
    return v2.Identity()
