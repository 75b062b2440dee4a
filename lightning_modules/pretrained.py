"""A trained network from a checkpoint without Lightning's trainer, and weights-only initialisation.

    from lightning_modules.pretrained import load_model
    net = load_model("runs/quickstart/.../checkpoints/last.ckpt")   # eval mode, class names, palette

Checkpoints are read with torch's safe loader (tensors and plain data only, `read_checkpoint`); a file
that holds anything else is refused unless DEEPLAB_TRUST_CHECKPOINTS=1 (docs/checkpoint-safety.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from datamodules.reading import LabelSpace

from .components import DeepLabV3Plus
from .run.checkpoints import UnsafeCheckpointError, read_checkpoint

NET_PREFIX = "net."

#: `net_config` settings that change no tensor of the network: a checkpoint loads whatever they are
#: (the output stride and multi-grid rates are strides and dilations, dropout has no weights, MobileNetV2's
#: official layers are an epsilon and a padding)
NOT_STRUCTURAL = ("weights", "output_stride", "multi_grid", "dropout", "official_layers")


def _read(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return read_checkpoint(path, map_location=map_location)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # torch raises several types for torn or foreign files
        raise ValueError(f"{path}: cannot read the checkpoint ({e}); "
                         "expected a Lightning .ckpt or a saved state dict") from None


def network_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The network's tensors: `net.*` of a Lightning checkpoint, or a plain state dict as it is."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith(NET_PREFIX) for k in state):
        return {k[len(NET_PREFIX):]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_net_config(path: str | Path) -> dict | None:
    """The `net_config` a checkpoint written by experiments.train carries (None for a plain state dict).
    Memory-mapped: the tensors are not read."""
    checkpoint = read_checkpoint(path, mmap=True)
    return checkpoint.get("net_config") if isinstance(checkpoint, dict) else None


def mismatched_settings(saved: dict, wanted: dict, keys: tuple[str, ...] | None = None) -> dict[str, tuple]:
    """{setting: (saved value, wanted value)} for each structural setting (or each of `keys`) in which a
    checkpoint's `net_config` and the wanted network differ; a setting one side lacks is not compared."""
    def same(a, b) -> bool:
        return (list(a) == list(b)) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b

    names = keys or [k for k in saved if k not in NOT_STRUCTURAL]
    return {k: (saved[k], wanted[k]) for k in names if k in saved and k in wanted and not same(saved[k], wanted[k])}


def load_network_weights(net: nn.Module, path: str | Path) -> list[str]:
    """Copy every tensor of the checkpoint's network whose name and shape match into `net` (fine-tuning:
    no optimizer, step or loop state). Logs one line naming each tensor of `net` left as initialised,
    with both shapes; returns those names."""
    source = network_state(_read(path))
    own = net.state_dict()
    loadable = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not loadable:
        raise ValueError(f"{path}: no tensor matches the network by name and shape; expected a checkpoint of "
                         f"the same backbone (its keys start {sorted(source)[:3]})")
    net.load_state_dict(loadable, strict=False)
    skipped = [k for k in own if k not in loadable]
    details = [f"{k} {tuple(source[k].shape)}→{tuple(own[k].shape)}" if k in source else f"{k} (absent)"
               for k in skipped]
    unused = sorted(set(source) - set(own))
    unused_note = f"; unused from the checkpoint: {', '.join(unused)}" if unused else ""
    rank_zero_info(f"init_from {path}: loaded {len(loadable)}/{len(own)} tensors; not loaded, kept as initialised: "
                   f"{', '.join(details) or 'none'}{unused_note}")
    return skipped


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> DeepLabV3Plus:
    """The trained network in eval mode, with `labels` (a `LabelSpace`), `class_names` and `palette` set;
    `net.normalization` names the input normalisation ("imagenet" or "inception")."""
    checkpoint = _read(path, map_location)
    if "net_config" not in checkpoint:
        raise ValueError(f"{path}: no 'net_config' in the checkpoint; expected one written by experiments.train")
    net = DeepLabV3Plus(**{**checkpoint["net_config"], "weights": None})
    state, own = network_state(checkpoint), net.state_dict()
    unfit = sorted(k for k in own.keys() | state.keys() if k not in own or k not in state or own[k].shape != state[k].shape)
    if unfit:
        raise ValueError(f"{path}: its weights do not fit its net_config ({checkpoint['net_config']}): {len(unfit)} "
                         f"tensors missing, unexpected or of another shape (e.g. {', '.join(unfit[:3])}); "
                         "expected a checkpoint as experiments.train writes it")
    net.load_state_dict(state)
    labels = LabelSpace(**checkpoint["labels"])
    net.labels, net.class_names, net.palette = labels, labels.class_names, labels.palette
    # the training crop: the default sliding window of `experiments.predict --tile` (None: not recorded)
    net.training_crop = (checkpoint.get("datamodule_hyper_parameters") or {}).get("crop_size")
    return net.to(map_location).eval()
