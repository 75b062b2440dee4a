"""What every backbone shares: feature taps named by stride and output stride set in place."""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import torch
from torch import nn

OUTPUT_STRIDES = (8, 16, 32)


class Backbone(nn.Module):
    """A classification network cut into `units` whose strides can become dilations.

    Subclasses build their layers, list them in `self.units` with their nominal strides, and implement
    `forward`, which returns ``{"stride4": ..., "stride8": ..., "out": ...}``: the low-level features the
    decoder taps ("Conv2" and "Conv3" before striding, paper §4.1) and the encoder output at the output
    stride. Changing the output stride touches only conv strides, dilations and paddings, never a
    parameter, so one trained model can be evaluated at several output strides (paper Table 3).
    """

    #: channels of the stride-4 and stride-8 taps and of the encoder output
    channels: dict[str, int]
    #: input normalisation the ImageNet weights expect: "imagenet" (mean/std) or "inception" ([-1, 1])
    normalization: str = "imagenet"
    #: BatchNorm momentum of the official code for this backbone (1 − TF-slim decay); the ASPP and
    #: decoder use 0.0003 (decay 0.9997) whatever the backbone
    official_bn_momentum: float = 0.0003
    #: stride of everything before the first unit
    stem_stride: int = 2

    def __init__(self) -> None:
        super().__init__()
        self.units: list[tuple[nn.Module, int]] = []
        self.multi_grid: tuple[int, ...] | None = None
        self.output_stride = 32

    def set_output_stride(self, output_stride: int) -> None:
        """Turn strides into dilations past `output_stride`, as TF-slim's `stack_blocks_dense` does.

        A unit that would stride once the target is reached runs at stride 1 with the current rate, and
        the rate is multiplied by its nominal stride for the units after it. With multi-grid, the units of
        the last stage run at the stage's rate × grid[i]: (2, 4, 8) at output stride 16 (DeepLabv3 §3.2).
        """
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        current, rate = self.stem_stride, 1
        settings = []
        for _, nominal_stride in self.units:
            if current == output_stride:
                settings.append((1, rate))
                rate *= nominal_stride
            else:
                settings.append((nominal_stride, 1))
                current *= nominal_stride
        if self.multi_grid:
            last = self.last_stage_units()
            if len(last) != len(self.multi_grid):
                raise ValueError(f"multi_grid {self.multi_grid} needs one rate per last-stage unit ({len(last)})")
            stage_rate = settings[last[-1]][1]
            for i, grid in zip(last, self.multi_grid):
                settings[i] = (settings[i][0], stage_rate * grid)
        for (unit, _), (stride, dilation) in zip(self.units, settings):
            self.set_unit_stride(unit, stride, dilation)
        self.output_stride = output_stride

    def last_stage_units(self) -> list[int]:
        """Indices in `units` of the last stage (where multi-grid applies)."""
        raise ValueError(f"{type(self).__name__} does not support multi_grid")

    @staticmethod
    def set_unit_stride(unit: nn.Module, stride: int, dilation: int) -> None:
        raise NotImplementedError

    def load_weights_file(self, path: str | Path, ignore_prefixes: Sequence[str] = ()) -> None:
        """Load a state dict saved from the library's own model (torchvision / timm) for clusters offline.

        Classifier keys (`ignore_prefixes`) are dropped; any other missing or unexpected key is an error.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        try:  # tensors and plain data only: a weights file that would run code is refused, never executed
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"{path}: not a plain state dict (it holds objects that only full unpickling, which can "
                             "run any code, loads); expected torch.save(model.state_dict(), path) of the library's "
                             "model (docs/checkpoint-safety.md)") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        self.load_library_state_dict(state, ignore_prefixes, source=str(path))

    def load_library_state_dict(
        self, state: dict[str, torch.Tensor], ignore_prefixes: Sequence[str] = (), source: str = "weights"
    ) -> None:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
        result = self.body.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{source} does not match the {type(self).__name__} backbone: "
                f"missing keys {result.missing_keys[:20]} ({len(result.missing_keys)} in all), "
                f"unexpected keys {result.unexpected_keys[:20]} ({len(result.unexpected_keys)} in all)"
            )


def set_conv_stride(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    """Set a conv's stride and dilation, keeping 'same' padding for odd kernels."""
    conv.stride = (stride, stride)
    if conv.kernel_size[0] > 1:
        conv.dilation = (dilation, dilation)
        conv.padding = (dilation * (conv.kernel_size[0] - 1) // 2,) * 2


def torchvision_weights(name: str, weights: str | None, enum: type[Enum]) -> Enum | None:
    """The torchvision weights enum member called `weights`, or None for a file path or no weights."""
    if not weights or is_weights_file(weights):
        return None
    try:
        return enum[weights]
    except KeyError:
        raise ValueError(f"unknown {name} weights {weights!r}: use one of {[w.name for w in enum]} "
                         "or a path to a saved state dict") from None


def is_weights_file(weights: str) -> bool:
    return Path(weights).suffix in {".pth", ".pt", ".bin", ".ckpt"} or Path(weights).is_file()
