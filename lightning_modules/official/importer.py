"""The official TF DeepLab checkpoints (tensorflow/models `research/deeplab/g3doc/model_zoo.md`) as our checkpoints.

A zoo checkpoint becomes a file that `load_model`, `experiments.train validate --ckpt_path`, `fit --model.init_from`,
`experiments.predict` and `experiments.export` take like one of our own: the network's tensors (`state_dict`,
`net.*`), its constructor arguments (`net_config`), its label space (`labels`) and where it came from
(`official`: source file, sha256, the official variables dropped on purpose and our tensors left initialised).
Which official variable fills which of our tensors is written beside each layer (`official_names()` of the
network's parts); this module recognises the network, checks every name and shape, and converts.

An ImageNet backbone checkpoint (`xception_65_imagenet`, `xception_71_imagenet`, `resnet_v1_101_beta`, …) becomes a
backbone-only file for `--model.init_from`: it has no head, so no `net_config`.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import numpy as np
import torch
from torch import nn

from datamodules.cityscapes import CITYSCAPES_LABELS
from datamodules.reading import LabelSpace
from datamodules.voc import VOC_LABELS

from ..run.checkpoints import atomic_torch_save
from ..components import DeepLabV3Plus
from ..components.aspp import DEFAULT_ATROUS_RATES
from ..components.backbones import build_backbone
from ..components.official import OfficialNames, tf_shape, to_torch
from ..pretrained import NET_PREFIX
from .tf_checkpoint import read_tf_checkpoint

#: official backbone scope → (our backbone, DeepLabV3Plus arguments it needs)
_BACKBONES = {
    "xception_65": ("xception65", {}),
    "xception_71": ("xception71", {}),
    "MobilenetV2": ("mobilenet_v2", {"official_layers": True}),
    "resnet_v1_50": ("resnet50_beta", {}),
    "resnet_v1_101": ("resnet101_beta", {}),
}
#: scopes of the DeepLab head, whatever the backbone
_HEAD_SCOPE = re.compile(r"^(aspp\d+(_depthwise|_pointwise)?|image_pooling|concat_projection|decoder|logits|global_step)$")
#: label spaces by class count: the zoo's VOC and Cityscapes (trainId) checkpoints
_LABELS = {21: VOC_LABELS, 19: CITYSCAPES_LABELS}
#: in an ImageNet backbone checkpoint, the parts that are not the DeepLab backbone: the classifier and
#: MobileNetV2's 1280-channel conv (the official DeepLab MobileNetV2 ends at the 320-channel block)
_IMAGENET_ONLY = re.compile(r"^[^/]+/(logits|Logits|Conv_1|AuxLogits)/")


class OfficialCheckpointError(ValueError):
    """A source that cannot become one of our checkpoints; the message is the one line for the user."""


@dataclass
class Imported:
    """What `convert` made: the checkpoint to save and what the user is told."""

    checkpoint: dict
    network: str
    summary: list[str] = field(default_factory=list)


def find_checkpoint(source: Path, workdir: Path) -> Path:
    """The checkpoint prefix (`…/model.ckpt`) in a zoo `.tar.gz` (extracted into `workdir`), a directory, an
    `.index` file or a prefix."""
    if not source.exists() and not Path(f"{source}.index").is_file():
        raise OfficialCheckpointError(f"{source}: no such file or directory; expected a model zoo .tar.gz, a directory "
                           "holding model.ckpt.index, or a checkpoint prefix such as …/model.ckpt")
    if source.is_file() and source.suffix != ".index" and tarfile.is_tarfile(source):
        try:
            with tarfile.open(source) as tar:
                tar.extractall(workdir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise OfficialCheckpointError(f"{source}: cannot extract the archive ({e}); expected a model zoo .tar.gz "
                               "as downloaded") from None
        source = workdir
    if source.is_dir():
        found = sorted(source.rglob("*.index"))
        if len(found) != 1:
            raise OfficialCheckpointError(f"{source}: expected one TensorFlow checkpoint (a *.index file) inside, found "
                               f"{len(found)}{': ' + ', '.join(str(f) for f in found) if found else ''}")
        source = found[0]
    if source.suffix == ".index":
        return source.with_suffix("")
    if Path(f"{source}.index").is_file():
        return source
    raise OfficialCheckpointError(f"{source}: not a TensorFlow checkpoint, a directory or a .tar.gz (no {source}.index)")


def sha256(source: Path, prefix: Path) -> str:
    """Of the file given (the zoo tarball), else of the checkpoint's index and data files in name order."""
    files = [source] if source.is_file() and source.suffix != ".index" else sorted(prefix.parent.glob(prefix.name + ".*"))
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def network_arguments(shapes: Mapping[str, tuple[int, ...]], output_stride: int = 16,
                      atrous_rates: Sequence[int] = DEFAULT_ATROUS_RATES,
                      multi_grid: Sequence[int] | None = None) -> tuple[str, dict, bool]:
    """(official backbone scope, DeepLabV3Plus arguments, has a DeepLab head) read from the variable names.

    What a checkpoint does not record is taken from the official training flags, given here: `output_stride`,
    `atrous_rates` (at output stride 16) and `multi_grid`."""
    scopes = {name.split("/", 1)[0] for name in shapes}
    found = [s for s in _BACKBONES if s in scopes]
    if not found:
        head = "logits/semantic/weights" in shapes
        listed = ", ".join(sorted(s for s in scopes if not _HEAD_SCOPE.match(s))[:5]) or "none"
        what = (f"a DeepLab checkpoint whose backbone ({listed}) we do not build" if head else
                f"not a DeepLab checkpoint: no DeepLab backbone among its variables (top-level scopes {listed})")
        raise OfficialCheckpointError(f"{what}; supported: {', '.join(_BACKBONES)} (the resnets as their beta variant)")
    scope = found[0]
    backbone, extra = _BACKBONES[scope]
    if backbone.endswith("_beta") and f"{scope}/conv1_1/weights" not in shapes:
        raise OfficialCheckpointError(f"{scope} without conv1_1 is the original ResNet-v1 (7×7 stem), not the beta variant "
                           "the paper uses; only resnet_v1_{50,101}_beta checkpoints are supported")
    config = {"backbone": backbone, "output_stride": output_stride, "multi_grid": multi_grid, **extra}
    head = "logits/semantic/weights" in shapes
    if not head:
        return scope, config, False
    separable = "aspp1_depthwise/depthwise_weights" in shapes
    branches = sum(f"aspp{i}/weights" in shapes or f"aspp{i}_depthwise/depthwise_weights" in shapes
                   for i in range(1, 10))
    if branches not in (0, len(atrous_rates)):
        raise OfficialCheckpointError(f"the checkpoint has {branches} atrous ASPP branches but atrous_rates={list(atrous_rates)} "
                           f"gives {len(atrous_rates)}: pass the rates it was trained with (--atrous_rates)")
    config |= {
        "num_classes": shapes["logits/semantic/weights"][-1],
        "atrous_rates": list(atrous_rates) if branches else [],
        "aspp_separable": separable,
        "image_pooling": "image_pooling/weights" in shapes,
        "aspp_channels": shapes["aspp0/weights"][-1],
        "decoder": "none",
    }
    if "decoder/feature_projection0/weights" in shapes:
        separable = "decoder/decoder_conv0_depthwise/depthwise_weights" in shapes
        widths = [shapes[n][-1] for n in sorted(shapes) if re.fullmatch(
            r"decoder/decoder_conv\d+_pointwise/weights" if separable else r"decoder/decoder_conv0/decoder_conv0_\d+/weights", n)]
        config |= {"decoder": ",".join(f"3x3:{w}" for w in widths), "decoder_separable": separable,
                   "decoder_projection": shapes["decoder/feature_projection0/weights"][-1]}
    return scope, config, True


def fill(module: nn.Module, names: OfficialNames, variables: Mapping[str, np.ndarray], prefix: str = "") -> set[str]:
    """Copy each official variable into our tensor it names; returns the official names used. Checks every
    name and shape first, so a failure leaves `module` untouched."""
    own = module.state_dict()
    missing = [o.name for o in names.values() if o.name not in variables]
    if missing:
        raise OfficialCheckpointError(f"missing tensor {missing[0]} (for our {prefix}{_key_of(names, missing[0])})"
                           f"{f', and {len(missing) - 1} more' if len(missing) > 1 else ''}: the checkpoint is not "
                           "the network its names say, or was cut short")
    tensors = {}
    for key, official in names.items():
        array = variables[official.name]
        expected = tf_shape(official.name, tuple(own[key].shape))
        if tuple(array.shape) != expected:
            raise OfficialCheckpointError(f"{official.name}: shape {tuple(array.shape)} in the checkpoint, {expected} expected "
                               f"for our {prefix}{key} {tuple(own[key].shape)}")
        tensor = to_torch(official.name, array)
        tensors[key] = official.reorder(tensor) if official.reorder else tensor
    module.load_state_dict(tensors, strict=False)
    return {o.name for o in names.values()}


def _key_of(names: OfficialNames, official: str) -> str:
    return next(k for k, o in names.items() if o.name == official)


def convert(variables: Mapping[str, np.ndarray], dropped: Mapping[str, tuple[int, ...]], source: str, digest: str,
            output_stride: int = 16, atrous_rates: Sequence[int] = DEFAULT_ATROUS_RATES,
            multi_grid: Sequence[int] | None = None) -> Imported:
    """Our checkpoint from the official variables (`read_tf_checkpoint`): every official tensor is used or
    listed as dropped, every tensor of ours is filled or listed as left initialised; else OfficialCheckpointError."""
    shapes = {name: tuple(a.shape) for name, a in variables.items()}
    scope, config, head = network_arguments(shapes, output_stride, atrous_rates, multi_grid)
    net = DeepLabV3Plus(**config) if head else None
    module: nn.Module = net if net is not None else build_backbone(
        config["backbone"], multi_grid=multi_grid, official_layers=config.get("official_layers", False))
    names = net.official_names() if net is not None else module.official_names()
    prefix = "" if net is not None else "backbone."
    imagenet_only = set() if head else {n for n in variables if _IMAGENET_ONLY.match(n)}
    unexpected = sorted(set(variables) - {o.name for o in names.values()} - imagenet_only)
    if unexpected:
        raise OfficialCheckpointError(f"{unexpected[0]}: not a variable of the official {config['backbone']} DeepLab network we "
                           f"build ({len(unexpected)} such{', e.g. ' + ', '.join(unexpected[1:3]) if len(unexpected) > 1 else ''}); "
                           "a checkpoint of another network or head")
    used = fill(module, names, variables, prefix)
    left = [prefix + k for k, v in module.state_dict().items()
            if v.is_floating_point() and k not in names]
    state = {NET_PREFIX + prefix + k: v for k, v in module.state_dict().items()}
    provenance = {
        "source": source, "sha256": digest, "network": scope,
        "tensors_used": len(used),
        "dropped": sorted(dropped) + sorted(imagenet_only),
        "left_initialised": left,
    }
    # the keys Lightning reads from a weights-only checkpoint (`validate --ckpt_path`); never trained here
    checkpoint: dict = {"state_dict": state, "official": provenance, "epoch": 0, "global_step": 0,
                        "pytorch-lightning_version": lightning.__version__}
    summary = [f"{scope}: {len(used)} official tensors → {len(state)} of ours"
               f"{'' if head else ' (backbone only, for --model.init_from)'}",
               f"dropped on purpose: {len(provenance['dropped'])} "
               f"({_describe(provenance['dropped'])})",
               f"left initialised: {', '.join(left) or 'none'}"]
    if net is not None:
        labels = _LABELS.get(net.classifier.out_channels) or LabelSpace(
            tuple(f"class_{i}" for i in range(net.classifier.out_channels)))
        checkpoint |= {"net_config": {**net.config, "weights": None}, "labels": labels.as_dict()}
        summary.append(f"labels: {net.classifier.out_channels} classes ({', '.join(labels.class_names[:3])}, …)")
    return Imported(checkpoint, scope, summary)


def _describe(names: Sequence[str]) -> str:
    kinds = sorted({("global_step" if n.endswith("global_step") else n.rsplit("/", 1)[-1] if "/" in n else n)
                    if not _IMAGENET_ONLY.match(n) else "ImageNet classifier" for n in names})
    return ", ".join(kinds) or "none"


def import_official(source: str | Path, output: str | Path, **flags) -> Imported:
    """Read `source` (zoo .tar.gz, directory or prefix) with TensorFlow, convert, and write `output`
    atomically; on any error nothing is written."""
    source, output = Path(source), Path(output)
    if output.suffix != ".ckpt":
        raise OfficialCheckpointError(f"--output {output}: expected a .ckpt path")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = find_checkpoint(source, Path(tmp))
        try:
            variables, dropped = read_tf_checkpoint(prefix)
        except ValueError as e:  # name the file the user gave, not the temporary copy out of the archive
            archive = source.is_file() and source.suffix != ".index"
            raise OfficialCheckpointError(str(e).replace(str(prefix), f"{source}:{prefix.name}") if archive
                                          else str(e)) from None
        digest = sha256(source, prefix)
    imported = convert(variables, dropped, str(source.resolve()), digest, **flags)
    atomic_torch_save(imported.checkpoint, output)
    return imported
