"""Read a TensorFlow checkpoint with TensorFlow's own reader (`tf.train.load_checkpoint`), in a child process.

TensorFlow is an optional dependency (`requirements-tf.txt`), needed only to convert; a converted file needs
none. It runs in a child process because importing tensorflow-cpu 2.21 before torchvision 0.29 in one
process segfaults at torchvision's import (and torch is always imported first here), and so that its
threads and memory end with the read.

    python -m lightning_modules.official.tf_checkpoint model.ckpt out.npz [other.ckpt other.npz ...]

(what `read_tf_checkpoints` runs: several checkpoints share one child, and TensorFlow's import, seconds, once)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: variables that a trained checkpoint holds besides the network, never loaded: the step counter, optimiser
#: slots (momentum, Adam, RMSProp) and moving-average shadows. They are listed as dropped, not read.
NOT_THE_NETWORK = re.compile(r"(^|/)global_step$|/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1|ExponentialMovingAverage)$")
_ERROR = "tf_checkpoint error: "


Variables = tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]


def read_tf_checkpoint(prefix: str | Path) -> Variables:
    """(network variables by name, {dropped name: shape}) of the checkpoint `prefix` (`model.ckpt` for the
    files `model.ckpt.index` + `model.ckpt.data-*`). Raises ValueError with TensorFlow's one-line reason
    for a torn or foreign file; ImportError when TensorFlow is not installed."""
    return read_tf_checkpoints([prefix])[0]


def read_tf_checkpoints(prefixes: list[str | Path]) -> list[Variables]:
    """`read_tf_checkpoint` of each prefix, all in one child process; the first unreadable one raises."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"variables{i}.npz" for i in range(len(prefixes))]
        pairs = [str(arg) for prefix, out in zip(prefixes, outs) for arg in (prefix, out)]
        run = subprocess.run([sys.executable, "-m", __name__, *pairs], capture_output=True, text=True)
        lines = [line for line in run.stderr.splitlines() if line.startswith(_ERROR)]
        if run.returncode != 0:
            if lines:
                reason = lines[-1][len(_ERROR):]
                raise (ImportError if reason.startswith("no tensorflow") else ValueError)(reason)
            tail = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
            raise ValueError(f"{', '.join(map(str, prefixes))}: TensorFlow could not read the checkpoint ({tail[0]})")
        return [_load(out) for out in outs]


def _load(out: Path) -> Variables:
    with np.load(out, allow_pickle=False) as saved:
        names = json.loads(str(saved["names"]))
        variables = {name: saved[f"v{i}"] for i, name in enumerate(names["read"])}
    return variables, {name: tuple(shape) for name, shape in names["dropped"].items()}


def _main(*pairs: str) -> int:
    """Read each (prefix, out.npz) pair; stop at the first unreadable checkpoint."""
    try:
        import tensorflow as tf
    except ImportError:
        print(f"{_ERROR}no tensorflow: converting an official checkpoint needs it "
              "(pip install -r requirements-tf.txt); a converted file does not", file=sys.stderr)
        return 2
    for prefix, out in zip(pairs[::2], pairs[1::2]):
        status = _read(tf, prefix, out)
        if status:
            return status
    return 0


def _read(tf, prefix: str, out: str) -> int:
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        read = sorted(name for name in shapes if not NOT_THE_NETWORK.search(name))
        arrays = {f"v{i}": np.asarray(reader.get_tensor(name)) for i, name in enumerate(read)}
    except Exception as e:  # NotFound, DataLoss, IndexError (torn), InvalidArgument (not a checkpoint), …
        reason = f"{type(e).__name__}: " + " ".join(str(getattr(e, "message", e)).split())
        print(f"{_ERROR}{prefix}: not a readable TensorFlow checkpoint ({reason[:300]})", file=sys.stderr)
        return 2
    dropped = {name: list(shapes[name]) for name in sorted(shapes) if NOT_THE_NETWORK.search(name)}
    np.savez(out, names=json.dumps({"read": read, "dropped": dropped}), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
