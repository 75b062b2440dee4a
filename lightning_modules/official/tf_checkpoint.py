"""Read a TensorFlow checkpoint with TensorFlow's own reader (`tf.train.load_checkpoint`), in a child process.

TensorFlow is an optional dependency (`requirements-tf.txt`), needed only to convert; a converted file needs
none. It runs in a child process because importing tensorflow-cpu 2.21 before torchvision 0.29 in one
process segfaults at torchvision's import (and torch is always imported first here), and so that its
threads and memory end with the read.

    python -m lightning_modules.official.tf_checkpoint model.ckpt out.npz   # what `read_tf_checkpoint` runs
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


def read_tf_checkpoint(prefix: str | Path) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """(network variables by name, {dropped name: shape}) of the checkpoint `prefix` (`model.ckpt` for the
    files `model.ckpt.index` + `model.ckpt.data-*`). Raises ValueError with TensorFlow's one-line reason
    for a torn or foreign file; ImportError when TensorFlow is not installed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "variables.npz"
        run = subprocess.run([sys.executable, "-m", __name__, str(prefix), str(out)], capture_output=True, text=True)
        lines = [line for line in run.stderr.splitlines() if line.startswith(_ERROR)]
        if run.returncode != 0:
            if lines:
                reason = lines[-1][len(_ERROR):]
                raise (ImportError if reason.startswith("no tensorflow") else ValueError)(reason)
            tail = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
            raise ValueError(f"{prefix}: TensorFlow could not read the checkpoint ({tail[0]})")
        with np.load(out, allow_pickle=False) as saved:
            names = json.loads(str(saved["names"]))
            variables = {name: saved[f"v{i}"] for i, name in enumerate(names["read"])}
        return variables, {name: tuple(shape) for name, shape in names["dropped"].items()}


def _main(prefix: str, out: str) -> int:
    try:
        import tensorflow as tf
    except ImportError:
        print(f"{_ERROR}no tensorflow: converting an official checkpoint needs it "
              "(pip install -r requirements-tf.txt); a converted file does not", file=sys.stderr)
        return 2
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
    sys.exit(_main(*sys.argv[1:3]))
