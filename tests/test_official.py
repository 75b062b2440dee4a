"""The official TF DeepLab checkpoints, imported and compared with what the official graph computes.

The fixture (`tests/official/`, README there) holds each official network's variable manifest and its outputs
for deterministic weights. Here those weights are rebuilt from the manifest, saved as real TF checkpoints by
TensorFlow, imported by `experiments.import_official`, and our network's outputs compared with the official ones.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments import export, predict
from experiments.import_official import main as import_official_main
from helpers import run_in_process, tiny_args
from lightning_modules.components import DeepLabV3Plus
from lightning_modules.components.backbones.resnet_beta import ResNetBetaBackbone
from lightning_modules.components.official import tf_shape
from lightning_modules.components.protocol import EvalProtocol
from lightning_modules.components.inference import labels_from, predict_probabilities
from lightning_modules.official.importer import OfficialCheckpointError, convert, import_official, sha256
from lightning_modules.official.tf_checkpoint import read_tf_checkpoints
from lightning_modules.pretrained import load_model, load_network_weights
from official.weights import official_value

OFFICIAL = Path(__file__).parent / "official"
#: the fixture's networks and the official training flags a checkpoint does not record
NETWORKS = {"xception65": {}, "xception71": {}, "mobilenet_v2": {}, "resnet_v1_101_beta": {"multi_grid": [1, 2, 4]}}
CASES = ("os16_odd", "os16_even", "os8_odd", "os16_aligned")
#: the official multi-scale + flip labels (`os16_aligned`) test our evaluation path, which is the same for every
#: network: three networks carry that case, Xception-71 the single-scale logits cases
MS_FLIP_NETWORKS = ("xception65", "mobilenet_v2", "resnet_v1_101_beta")
ZOO = "deeplabv3_mnv2_pascal_train_aug"


def manifest(network: str) -> list[dict]:
    return json.loads((OFFICIAL / "fixtures" / f"{network}.manifest.json").read_text())


def official_arrays(variables: list[dict]) -> dict[str, np.ndarray]:
    return {v["name"]: official_value(v["name"], tuple(v["shape"])) for v in variables}


@pytest.fixture(scope="module")
def tf_checkpoints(tmp_path_factory) -> Path:
    """Real TF checkpoints, written by TensorFlow in one child process: the fixture networks; a zoo
    tarball (MobileNetV2 with its momentum slots and global_step, as downloaded); a resnet_v1_50 beta ImageNet
    backbone with its classifier; and a MobileNetV2 with one tensor missing."""
    root = tmp_path_factory.mktemp("tf")
    mobilenet = manifest("mobilenet_v2")
    slots = [{"name": f"{v['name']}/Momentum", "shape": v["shape"]} for v in mobilenet if v["name"].endswith("weights")]
    backbone = ResNetBetaBackbone(50)
    own = backbone.state_dict()
    imagenet = [{"name": o.name, "shape": list(tf_shape(o.name, tuple(own[k].shape)))}
                for k, o in backbone.official_names().items()]
    imagenet += [{"name": "resnet_v1_50/logits/weights", "shape": [1, 1, 2048, 1000]},
                 {"name": "resnet_v1_50/logits/biases", "shape": [1000]}, {"name": "global_step", "shape": []}]
    jobs = [{"prefix": str(root / net / "model.ckpt"), "variables": manifest(net)} for net in NETWORKS]
    jobs += [
        {"prefix": str(root / ZOO / "model.ckpt-30000"),
         "variables": mobilenet + slots + [{"name": "global_step", "shape": []}]},
        {"prefix": str(root / "resnet_v1_50" / "model.ckpt"), "variables": imagenet},
        {"prefix": str(root / "missing" / "model.ckpt"),
         "variables": [v for v in mobilenet if v["name"] != "MobilenetV2/expanded_conv_3/project/weights"]},
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(OFFICIAL / "write_checkpoints.py"), str(root / "jobs.json")], check=True,
                   timeout=600)
    (root / ZOO / "frozen_inference_graph.pb").write_bytes(b"\x08\x01")  # the zoo ships one; never read
    with tarfile.open(root / f"{ZOO}_2018_01_29.tar.gz", "w:gz") as tar:
        tar.add(root / ZOO, arcname=ZOO)
    return root


@pytest.fixture(scope="module")
def imported(tf_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The fixture's networks converted as `import_official` converts them, read by one TensorFlow child (whose
    import takes seconds); `import_official` itself: the zoo tarball and ImageNet tests below."""
    out = tmp_path_factory.mktemp("imported")
    prefixes = [tf_checkpoints / network / "model.ckpt" for network in NETWORKS]
    paths = {}
    for (network, flags), prefix, (variables, dropped) in zip(NETWORKS.items(), prefixes, read_tf_checkpoints(prefixes)):
        paths[network] = out / f"{network}.ckpt"
        converted = convert(variables, dropped, str(prefix), sha256(prefix, prefix), **flags)
        torch.save(converted.checkpoint, paths[network])
    return paths


def _image(case: np.lib.npyio.NpzFile) -> torch.Tensor:
    """The official preprocessing, 2/255·x − 1, of the fixture's uint8 image (NHWC → NCHW)."""
    return torch.from_numpy(case["image"]).permute(0, 3, 1, 2).float() * (2 / 255) - 1


@pytest.mark.parametrize("network", NETWORKS)
@torch.no_grad()
def test_imported_network_computes_the_official_outputs(imported, network):
    checkpoint = torch.load(imported[network], weights_only=True)
    assert checkpoint["official"]["dropped"] == [] and checkpoint["official"]["left_initialised"] == []
    net = load_model(imported[network])
    for name in CASES if network in MS_FLIP_NETWORKS else CASES[:3]:
        case = np.load(OFFICIAL / "fixtures" / f"{network}_{name}.npz")
        settings = json.loads(str(case["settings"]))
        net.set_output_stride(settings["output_stride"])
        x = _image(case)
        logits = net.logits(x).permute(0, 2, 3, 1).numpy()
        official = case["logits"]
        assert logits.shape == official.shape, name
        relative = np.abs(logits - official).max() / np.abs(official).max()
        assert relative < 1e-4, f"{name}: logits differ by {relative:.2e} of their range"
        assert (net(x).argmax(1).numpy() == case["labels"]).mean() >= 0.999, name
    if network not in MS_FLIP_NETWORKS:
        return
    # the official multi-scale + flip labels through our evaluation path (canvas = the aligned 65×65 image)
    case = np.load(OFFICIAL / "fixtures" / f"{network}_os16_aligned.npz")
    settings = json.loads(str(case["settings"]))
    net.set_output_stride(16)
    protocol = EvalProtocol(16, tuple(settings["eval_scales"]), settings["add_flipped_images"], None).resolve(16)
    labels = labels_from(predict_probabilities(net, _image(case), protocol)).numpy()
    assert (labels == case["labels_ms_flip"]).mean() >= 0.999


def test_zoo_tarball_imports_then_validates_predicts_exports_and_fine_tunes(tf_checkpoints, voc_root, tmp_path, capfd,
                                                                           caplog):
    """The whole path in this process (the TensorFlow read in its own child, as always)."""
    tarball = tf_checkpoints / f"{ZOO}_2018_01_29.tar.gz"
    ckpt = tmp_path / "mobilenetv2_voc.ckpt"
    assert import_official_main([str(tarball), "--output", str(ckpt)]) == 0
    out = capfd.readouterr().out
    slots = sum(v["name"].endswith("weights") for v in manifest("mobilenet_v2"))
    assert f"dropped on purpose: {slots + 1} (Momentum, global_step)" in out, out
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["official"]["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert checkpoint["net_config"]["official_layers"] and checkpoint["net_config"]["decoder"] == "none"
    assert checkpoint["labels"]["class_names"][:2] == ["background", "aeroplane"]
    config = ckpt.with_suffix(".yaml")

    run_dir = tmp_path / "runs"
    run_in_process("validate", "--config", str(config), "--ckpt_path", str(ckpt), f"--data.root={voc_root}",
                   "--data.num_workers=0", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                   f"--trainer.logger.init_args.save_dir={run_dir / 'validate'}")
    assert "val/mIoU" in capfd.readouterr().out

    first = sorted((voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages").iterdir())[0]
    assert predict.main(["--ckpt_path", str(ckpt), "--input", str(first), "--output", str(tmp_path / "pred")]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / f"{first.stem}.png"))
    assert mask.shape == np.asarray(Image.open(first)).shape[:2] and mask.max() < 21

    program = tmp_path / "model.pt2"
    assert export.main(["--ckpt_path", str(ckpt), "--output", str(program)]) == 0
    rgb = torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1)[None]
    exported = torch.export.load(program).module()(rgb)[0].argmax(0).numpy()
    assert (exported == mask).mean() >= 0.99

    caplog.clear()
    run_in_process("fit", *tiny_args(voc_root, run_dir / "fit", max_steps=2), "--config", str(config),
                   f"--model.init_from={ckpt}")
    log = caplog.text  # Lightning's log lines reach pytest's handler in this process
    assert f"init_from {ckpt}: loaded" in log and "kept as initialised: none" in log


def test_imagenet_backbone_checkpoint_initialises_the_backbone(tf_checkpoints, tmp_path):
    ckpt = tmp_path / "resnet50_beta_imagenet.ckpt"
    imported = import_official(tf_checkpoints / "resnet_v1_50" / "model.ckpt", ckpt)
    dropped = torch.load(ckpt, weights_only=True)["official"]["dropped"]
    assert dropped == ["global_step", "resnet_v1_50/logits/biases", "resnet_v1_50/logits/weights"]
    assert "net_config" not in imported.checkpoint
    net = DeepLabV3Plus("resnet50_beta", multi_grid=[1, 2, 4])
    skipped = load_network_weights(net, ckpt)
    assert skipped and all(not k.startswith("backbone.") for k in skipped)  # ASPP, decoder, classifier are new
    name = "resnet_v1_50/block3/unit_6/bottleneck_v1/conv2/weights"
    expected = official_value(name, (3, 3, 256, 256)).transpose(3, 2, 0, 1)
    assert torch.equal(net.backbone.body.layer3[5].conv2.weight, torch.from_numpy(expected))


def test_torn_missing_and_absent_sources_are_one_line_and_write_nothing(tf_checkpoints, tmp_path, capsys):
    torn = tmp_path / "torn"
    shutil.copytree(tf_checkpoints / "mobilenet_v2", torn)
    data = next(torn.glob("model.ckpt.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    cases = {
        torn / "model.ckpt": "not a readable TensorFlow checkpoint",
        tf_checkpoints / "missing": "missing tensor MobilenetV2/expanded_conv_3/project/weights",
        tmp_path / "nowhere.tar.gz": "no such file or directory",
    }
    for source, expected in cases.items():
        output = tmp_path / "out.ckpt"
        assert import_official_main([str(source), "--output", str(output)]) == 2 and not output.exists()
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and line.startswith("error: ") and expected in line, line


def _mobilenet_variables(**changes) -> dict[str, np.ndarray]:
    arrays = official_arrays(manifest("mobilenet_v2"))
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    return arrays


@pytest.mark.parametrize("variables, expected", [
    pytest.param(lambda: _mobilenet_variables(**{"logits/semantic/biases": np.zeros(20, np.float32)}),
                 "logits/semantic/biases: shape (20,) in the checkpoint, (21,) expected", id="wrong-shape"),
    pytest.param(lambda: {k.replace("MobilenetV2/", "MobilenetV3/"): v for k, v in _mobilenet_variables().items()},
                 "a DeepLab checkpoint whose backbone (MobilenetV3) we do not build", id="unknown-network"),
    pytest.param(lambda: {"resnet_v1_101/conv1/weights": np.zeros((7, 7, 3, 64), np.float32)},
                 "resnet_v1_101 without conv1_1 is the original ResNet-v1", id="plain-resnet"),
    pytest.param(lambda: {"dense/kernel": np.zeros((4, 3), np.float32), "dense/bias": np.zeros(3, np.float32)},
                 "not a DeepLab checkpoint: no DeepLab backbone among its variables (top-level scopes dense)",
                 id="foreign"),
    pytest.param(lambda: _mobilenet_variables(**{"MobilenetV2/extra/weights": np.zeros((1, 1, 3, 3), np.float32)}),
                 "MobilenetV2/extra/weights: not a variable of the official mobilenet_v2", id="extra-tensor"),
])
def test_checkpoints_of_another_network_are_one_line(variables, expected):
    with pytest.raises(OfficialCheckpointError) as error:
        convert(variables(), {}, "model.ckpt", "0" * 64)
    assert expected in str(error.value) and "\n" not in str(error.value)
