"""Bugs that hid behind something else: each test fails on the code that had it."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from experiments.cli.training import NOT_RUN_PACKAGES, PACKAGES, run_metadata
from lightning_modules.components import DeepLabV3Plus
from lightning_modules.run.checkpoints import atomic_torch_save, atomic_write_text
from lightning_modules.segmentation import SegmentationModule

from conftest import ROOT


def test_batchnorm_loop_does_not_overwrite_an_argument():
    """The BN momentum loop once reused the name of the SGD `momentum` argument: harmless only because the
    hyperparameters were saved before it. No loop variable of `__init__` may shadow one of its arguments."""
    tree = ast.parse((ROOT / "lightning_modules/segmentation.py").read_text())
    init = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    arguments = {a.arg for a in init.args.args}
    shadowing = set()
    for node in ast.walk(init):
        targets = [node.target] if isinstance(node, (ast.For, ast.AugAssign)) else (
            node.targets if isinstance(node, ast.Assign) else [])
        for target in targets:  # a name or a tuple of names (not `self.x`: an attribute)
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            shadowing |= {n.id for n in names if isinstance(n, ast.Name) and n.id in arguments}
    # resolving "official" to the backbone's value is the one intended reassignment
    assert shadowing <= {"backbone_bn_momentum"}, f"__init__ reassigns its arguments {sorted(shadowing)}"

    module = SegmentationModule(DeepLabV3Plus("mobilenet_v2", num_classes=3, weights=None, decoder="none"),
                                momentum=0.5, bn_momentum=0.01, backbone_bn_momentum=0.02)
    assert module.hparams.momentum == 0.5
    backbone = {id(m) for m in module.net.backbone.modules()}
    momenta = {m.momentum for m in module._batchnorms() if id(m) not in backbone}
    assert momenta == {0.01} and {m.momentum for m in module._batchnorms() if id(m) in backbone} == {0.02}


@pytest.mark.parametrize("write", [atomic_write_text, atomic_torch_save], ids=["text", "torch"])
def test_killed_writer_leaves_no_temporary_file(tmp_path, write):
    """A writer killed mid-write (SIGKILL: no cleanup) leaves `.<name>.<pid>.tmp`; the next write of the same
    file removes it, for run files (results.json) as for checkpoints."""
    target = tmp_path / "results.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".results.json.{int(dead.stdout)}.tmp"  # a process that is gone
    stale.write_text('{"torn')
    alive = tmp_path / f".results.json.{os.getppid()}.tmp"  # a live writer's file is left alone
    alive.write_text("{")
    if write is atomic_torch_save:
        atomic_torch_save({"finished": True}, target)
    else:
        atomic_write_text(target, '{"finished": true}')
    assert not stale.exists(), "a killed writer's temporary file is still there"
    assert alive.exists() and target.exists()


def test_every_requirement_a_run_uses_is_recorded():
    """`run_metadata` records the version of every requirement except those a run never imports (the
    package list once left out torchcodec, which decodes every image)."""
    required = {re.split(r"[=<>\[ ]", line.strip())[0].lower()
                for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert required - set(NOT_RUN_PACKAGES) == set(PACKAGES), "update PACKAGES or NOT_RUN_PACKAGES"
    assert "torchcodec" in run_metadata()["packages"]
