"""Modified aligned Xception-65 and -71 from timm (paper §3.2, Table 7), whose TF-ported weights are the official
ones."""
from __future__ import annotations

import timm
import torch
from timm.models.xception_aligned import XceptionModule

from ..official import OfficialNames, conv_bn, prefixed
from .base import Backbone, is_weights_file, set_conv_stride

#: entry-flow blocks per depth (official `xception_65` / `xception_71`; timm's block_cfg is the same)
ENTRY_FLOW = {65: 3, 71: 5}
#: the entry blocks tapped for the decoder, by depth: the official `networks_to_feature_maps`
#: (core/feature_extractor.py) — stride 4 is `entry_flow/block2` for xception_65 but `block3` for xception_71,
#: whose block2 has stride 1; stride 8 is block3 / block5. Each is the block's second pointwise output.
TAPPED_BLOCKS = {65: {"stride4": 1, "stride8": 2}, 71: {"stride4": 2, "stride8": 4}}


def official_units(depth: int) -> list[str]:
    """timm's `blocks` in the official scopes: the entry flow's blocks, 16 middle units, 2 exit blocks."""
    return ([f"entry_flow/block{b}/unit_1" for b in range(1, ENTRY_FLOW[depth] + 1)]
            + [f"middle_flow/block1/unit_{u}" for u in range(1, 17)]
            + [f"exit_flow/block{b}/unit_1" for b in (1, 2)])


class XceptionBackbone(Backbone):
    """timm `xception65` / `xception71`: entry flow (3 / 5 blocks), 16 middle units, exit flow (2 blocks).

    Xception-71's entry flow is 128 s2, 256 s1, 256 s2, 728 s1, 728 s2 (Xception-65's: 128, 256, 728, all
    s2); the rest is the same. Taps, as the official `feature_extractor.py`: the pointwise output of the
    second separable conv of an entry-flow block (`TAPPED_BLOCKS`; 256 ch at stride 4 before the block
    strides, 728 ch at stride 8), taken before the ReLU that starts the third separable conv. `weights`: a
    timm tag such as "tf_in1k" (the TF-ported ImageNet weights, inputs in [-1, 1]) or a path to a state
    dict of `timm.create_model("xception65")` (or "xception71").
    """

    normalization = "inception"
    official_bn_momentum = 0.0003  # feature_extractor.py: batch_norm_decay=0.9997 (ε 1e-3, as timm's)

    def __init__(self, weights: str | None = None, depth: int = 65) -> None:
        super().__init__()
        if depth not in ENTRY_FLOW:
            raise ValueError(f"Xception depth must be one of {tuple(ENTRY_FLOW)}, got {depth}")
        self.depth = depth
        self.taps = TAPPED_BLOCKS[depth]
        from_file = bool(weights) and is_weights_file(weights)
        name = f"xception{depth}" if not weights or from_file else f"xception{depth}.{weights}"
        self.body = timm.create_model(name, pretrained=bool(weights) and not from_file, num_classes=0)
        del self.body.head
        if from_file:
            self.load_weights_file(weights, ignore_prefixes=("head.",))
        for index in self.taps.values():
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

    def official_names(self) -> OfficialNames:
        """Our `body.*` keys → `xception_65/...` (`xception_71/...`): timm's layers are the official ones one to one (timm's
        `tf_in1k` weights were converted from the official ImageNet checkpoint), so this is only names."""
        names: OfficialNames = {}
        for i in range(len(self.body.stem)):
            names |= conv_bn(f"body.stem.{i}.conv", f"body.stem.{i}.bn", f"entry_flow/conv1_{i + 1}")
        for index, (block, scope) in enumerate(zip(self.body.blocks, official_units(self.depth), strict=True)):
            unit: OfficialNames = {}
            for j in (1, 2, 3):
                sep = f"/xception_module/separable_conv{j}"
                unit |= conv_bn(f"stack.conv{j}.conv_dw", f"stack.conv{j}.bn_dw", f"{sep}_depthwise", depthwise=True)
                unit |= conv_bn(f"stack.conv{j}.conv_pw", f"stack.conv{j}.bn_pw", f"{sep}_pointwise")
            if block.shortcut is not None:
                unit |= conv_bn("shortcut.conv", "shortcut.bn", "/xception_module/shortcut")
            names |= prefixed(f"body.blocks.{index}.", unit, scope)
        return prefixed("", names, f"xception_{self.depth}/")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.body.stem(x)
        taps = {}
        tap_at = {index: name for name, index in self.taps.items()}
        for i, block in enumerate(self.body.blocks):
            if i in tap_at:
                y = x
                for name, layer in block.stack.named_children():
                    y = layer(y)
                    if name == "conv2":
                        taps[tap_at[i]] = y
                x = _residual(block, y, x)
            else:
                x = block(x)
        return {**taps, "out": self.body.act(x)}


def _residual(block: XceptionModule, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The end of `XceptionModule.forward` (stack output y, block input x), written with the module's public
    attributes (`shortcut`, `no_skip`, `drop_path`, present in every timm 1.0.x): timm's own helper for
    this, `_residual`, is private and missing from earlier timm 1.0 releases."""
    if block.no_skip:
        return y
    skip = x if block.shortcut is None else block.shortcut(x)
    if block.drop_path is not None:
        y = block.drop_path(y)
    return y + skip


def _nominal_stride(block: XceptionModule) -> int:
    return block.stack.conv3.conv_dw.stride[0]
