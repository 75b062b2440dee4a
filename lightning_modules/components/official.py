"""Official TensorFlow DeepLab variable names beside our tensors: the vocabulary each module's
`official_names()` is written in, and the one conversion from a TF array to a PyTorch tensor.

A module's `official_names()` maps its own state-dict keys to the official variable names (timm keeps
such a mapping in each model file, `checkpoint_filter_fn`): a change to a block and to its mapping is one
diff. What the array becomes is decided by the official name alone — `weights` are HWIO kernels,
`depthwise_weights` are (H, W, C, multiplier) kernels, BN and bias vectors are taken as they are — and a
mapping entry may add a `reorder` of its own (the ASPP concat order).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Official:
    """One official variable and what to do to it after the layout conversion."""

    name: str
    reorder: Callable[[torch.Tensor], torch.Tensor] | None = None


#: our state-dict key → the official variable it is filled from
OfficialNames = dict[str, Official]

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def conv(key: str, scope: str, bias: bool = False, depthwise: bool = False) -> OfficialNames:
    """A conv's kernel (`<key>.weight`), and bias, from TF-slim's `<scope>/weights` (`depthwise_weights`)."""
    names = {f"{key}.weight": Official(f"{scope}/{'depthwise_weights' if depthwise else 'weights'}")}
    if bias:
        names[f"{key}.bias"] = Official(f"{scope}/biases")
    return names


def batch_norm(key: str, scope: str) -> OfficialNames:
    """A BatchNorm's four tensors from TF-slim's `<scope>/{gamma, beta, moving_mean, moving_variance}`."""
    return {f"{key}.{ours}": Official(f"{scope}/{theirs}") for ours, theirs in _BN.items()}


def conv_bn(conv_key: str, bn_key: str, scope: str, depthwise: bool = False) -> OfficialNames:
    """`slim.conv2d` (or `separable_conv2d` without pointwise) with its `BatchNorm` normaliser."""
    return {**conv(conv_key, scope, depthwise=depthwise), **batch_norm(bn_key, f"{scope}/BatchNorm")}


def prefixed(prefix: str, names: Mapping[str, Official], scope: str = "") -> OfficialNames:
    """`names` under our module `prefix` and the official variable scope `scope`."""
    return {prefix + key: Official(scope + o.name, o.reorder) for key, o in names.items()}


def to_torch(name: str, array: np.ndarray) -> torch.Tensor:
    """A TF array in PyTorch's layout: HWIO kernels → OIHW, depthwise (H, W, C, M) → (C·M, 1, H, W)."""
    kind = name.rsplit("/", 1)[-1]
    if kind == "weights" and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif kind == "depthwise_weights":
        h, w, c, m = array.shape
        array = array.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def tf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The official variable's shape for one of our tensors of `shape` (for messages and checks)."""
    kind = name.rsplit("/", 1)[-1]
    if kind == "weights" and len(shape) == 4:
        o, i, h, w = shape
        return (h, w, i, o)
    if kind == "depthwise_weights":
        c, _, h, w = shape
        return (h, w, c, 1)
    return tuple(shape)
