"""Modified aligned Xception-65 from timm (paper §3.2), whose TF-ported weights are the official ones."""
from __future__ import annotations

import timm
import torch
from timm.models.xception_aligned import XceptionModule

from .base import Backbone, is_weights_file, set_conv_stride

_ENTRY_BLOCKS = {"stride4": 1, "stride8": 2}


class XceptionBackbone(Backbone):
    """timm `xception65`: entry flow (3 blocks), 16 middle units, exit flow (2 blocks).

    Taps, as the official `feature_extractor.py`: the pointwise output of the second separable conv of
    entry-flow block 2 (256 ch, stride 4, before the block strides) and of block 3 (728 ch, stride 8),
    taken before the ReLU that starts the third separable conv. `weights`: a timm tag such as "tf_in1k"
    (the TF-ported ImageNet weights, inputs in [-1, 1]) or a path to a state dict of
    `timm.create_model("xception65")`.
    """

    normalization = "inception"
    official_bn_momentum = 0.0003  # feature_extractor.py: batch_norm_decay=0.9997 (ε 1e-3, as timm's)

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        from_file = bool(weights) and is_weights_file(weights)
        name = "xception65" if not weights or from_file else f"xception65.{weights}"
        self.body = timm.create_model(name, pretrained=bool(weights) and not from_file, num_classes=0)
        del self.body.head
        if from_file:
            self.load_weights_file(weights, ignore_prefixes=("head.",))
        for index in _ENTRY_BLOCKS.values():
            # the tap is read before this ReLU, which must not overwrite it
            self.body.blocks[index].stack.act3.inplace = False
        self.channels = {"stride4": 256, "stride8": 728, "out": 2048}
        self.units = [(block, _nominal_stride(block)) for block in self.body.blocks]

    @staticmethod
    def set_unit_stride(unit: XceptionModule, stride: int, dilation: int) -> None:
        # only the third separable conv strides; all three share the unit's rate (official xception_module)
        for sep, sep_stride in ((unit.stack.conv1, 1), (unit.stack.conv2, 1), (unit.stack.conv3, stride)):
            set_conv_stride(sep.conv_dw, sep_stride, dilation)
        if unit.shortcut is not None:
            unit.shortcut.conv.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.body.stem(x)
        taps = {}
        tap_at = {index: name for name, index in _ENTRY_BLOCKS.items()}
        for i, block in enumerate(self.body.blocks):
            if i in tap_at:
                skip, y = x, x
                for name, layer in block.stack.named_children():
                    y = layer(y)
                    if name == "conv2":
                        taps[tap_at[i]] = y
                x = block._residual(y, skip)
            else:
                x = block(x)
        return {**taps, "out": x}


def _nominal_stride(block: XceptionModule) -> int:
    return block.stack.conv3.conv_dw.stride[0]
