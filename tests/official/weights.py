"""Deterministic values for every variable of the official DeepLab graphs.

The official-graph fixture (``make_fixture.py``) and the equivalence test must
fill the same variable with the same numbers without sharing a checkpoint, so
each value is a pure function of the variable's name and shape: numpy's
``RandomState(crc32(name))``. Needs numpy only (no TensorFlow, no torch).
"""

from __future__ import annotations

import zlib

import numpy as np


# The BN that closes an Xception module's residual branch.
_RESIDUAL_BRANCH_END = "xception_module/separable_conv3_pointwise/BatchNorm/gamma"


def _rng(name: str) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32(name.encode()))


def official_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 value of official variable ``name`` (without ``:0``).

    Chosen by the last name component so that the network stays well scaled:
    He-scaled convolutions (so activations neither explode nor vanish through
    100+ layers) and positive BN variances.
    """
    shape = tuple(int(d) for d in shape)
    kind = name.rsplit("/", 1)[-1]
    rng = _rng(name)
    if kind == "weights":  # conv kernel HWIO (1x1 and logits included)
        if len(shape) != 4:
            raise ValueError(f"{name}: expected a 4-d HWIO kernel, got shape {shape}")
        h, w, c_in, _ = shape
        value = rng.standard_normal(shape) * np.sqrt(2.0 / (h * w * c_in))
    elif kind == "depthwise_weights":  # (H, W, C, multiplier)
        if len(shape) != 4:
            raise ValueError(f"{name}: expected a 4-d depthwise kernel, got shape {shape}")
        h, w = shape[:2]
        value = rng.standard_normal(shape) * np.sqrt(2.0 / (h * w))
    elif kind in ("biases", "beta", "moving_mean"):
        value = rng.standard_normal(shape) * 0.1
    elif kind == "gamma" and name.endswith(_RESIDUAL_BRANCH_END):
        # BN statistics here are random, so BN does not renormalise: with
        # gamma ~ 1 the 21 residual sums of Xception-65 grow the logits to
        # ~1e10 (measured). A small gamma on the BN that closes each Xception
        # residual branch keeps them O(1-100).
        value = rng.uniform(0.1, 0.3, shape)
    elif kind in ("gamma", "moving_variance"):
        value = rng.uniform(0.5, 1.5, shape)
    else:
        raise ValueError(f"{name}: no deterministic rule for a variable named {kind!r}")
    return value.astype(np.float32)


def test_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB image [1, H, W, 3]: uniform noise smoothed by a 3x3 box.

    Pure noise has no spatial structure, so every pixel's argmax would hinge
    on tiny differences; a light box blur (edge-replicated, integer
    arithmetic) keeps it deterministic and gives regions larger than a pixel.
    """
    noise = np.random.RandomState(seed).randint(0, 256, size=(height, width, 3)).astype(np.int64)
    padded = np.pad(noise, ((1, 1), (1, 1), (0, 0)), mode="edge")
    total = sum(
        padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)
    )
    return (total // 9).astype(np.uint8)[None]


# pytest collects module-level ``test_*`` callables that a test module imports;
# this one is a helper, not a test.
test_image.__test__ = False  # type: ignore[attr-defined]
