"""Write real TensorFlow checkpoints for the tests, with TensorFlow's own writer (`tf.raw_ops.SaveV2`).

Run in a child process (TensorFlow and torchvision cannot be imported in that order in one process):

    python tests/official/write_checkpoints.py jobs.json

`jobs.json` is a list of `{"prefix": ".../model.ckpt", "variables": [{"name": ..., "shape": [...]}, ...]}`.
Each variable gets `weights.official_value(name, shape)`, the value the official-graph fixture was computed
with; a name it has no rule for (optimiser slots, `global_step`, another network's `dense/kernel`) gets
zeros, as a fresh slot or counter would.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from weights import official_value  # noqa: E402


def value(name: str, shape: list[int]) -> np.ndarray:
    if name.endswith("global_step"):
        return np.array(30000, dtype=np.int64)
    try:
        return official_value(name, tuple(shape))
    except ValueError:
        return np.zeros(shape, dtype=np.float32)


def write(prefix: str, variables: list[dict]) -> None:
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    names = [v["name"] for v in variables]
    tensors = [tf.constant(value(v["name"], v["shape"])) for v in variables]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


if __name__ == "__main__":
    for job in json.loads(Path(sys.argv[1]).read_text()):
        write(job["prefix"], job["variables"])
