"""Shared fixtures: a generated VOC-format tree (built once per session) and the repo root."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `pytest -n N`: the workers share the cores
    # set before torch starts, so that the processes a test starts inherit it: a run in this process and the
    # same run in a child compute with the same number of threads (bitwise-equal resumes)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) //
                                                     int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from datamodules import synthetic  # noqa: E402

#: library warnings we cannot fix, each filtered by its own message (never a whole category or module)
LIBRARY_WARNINGS = (
    # torchdata's StatefulDataLoader calls torch.set_vital, which torch deprecates
    "ignore:'set_vital' is deprecated:UserWarning",
)


#: the files whose tests take longest (minutes on 2 cores), first: with `pytest -n 3` each file is one unit of
#: work (`--dist loadfile`, tests/pytest.ini), and starting the long ones first keeps the workers busy to the end
LONG_FILES = ("test_training.py", "test_slurm.py", "test_official.py", "test_robust.py", "test_ablations.py",
              "test_configs.py", "test_table7.py", "test_data_guards.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: each file keeps its own order


def pytest_configure(config: pytest.Config) -> None:
    for line in LIBRARY_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(autouse=True)
def _no_shared_wandb_service():
    """A `wandb.init` in this process (in-process fits) leaves WANDB_SERVICE set, and every subprocess started
    after it would join this process's W&B service: a run killed there stays "in use" for its resume, and
    its records are flushed by our service, not its own. Each test's subprocesses get their own service."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(autouse=True)
def _no_wandb_run_left_behind():
    """An in-process run that fails leaves its W&B run open, and Lightning's WandbLogger would reuse it."""
    def finish() -> None:
        wandb = sys.modules.get("wandb")  # never imported here for tests that do not use it
        if wandb is not None and wandb.run is not None:
            wandb.finish()

    finish()
    yield
    finish()


@pytest.fixture
def wandb_disabled(monkeypatch):
    """W&B off for this test (WANDB_MODE=disabled), for in-process runs whose W&B files no one reads. wandb
    reads its settings once per process, when its first run starts: after the test it is torn down, so that
    the runs of later tests are not disabled too (and write their offline files)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


@pytest.fixture
def jobs_in_process(monkeypatch):
    """The ablation runner's local jobs (`python -m experiments.train ...`) run in this process: what the
    runner plans, skips and reads back is under test, not the interpreter start of each job."""
    import contextlib
    import subprocess

    from ablations import launch
    from experiments import train
    from helpers import finish_wandb

    run = subprocess.run

    def in_process(cmd, *args, **kwargs):
        if cmd[1:3] != ["-m", "experiments.train"]:
            return run(cmd, *args, **kwargs)
        code = 0
        try:
            with contextlib.chdir(kwargs.get("cwd") or os.getcwd()):  # the job's config paths are relative
                train.main(cmd[3:])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            finish_wandb()
        return subprocess.CompletedProcess(cmd, code)

    monkeypatch.setattr(launch.subprocess, "run", in_process)


@pytest.fixture(autouse=True)
def _seeded_global_random():
    """Every test starts from the same global random state (torch, numpy, random; seed 0), whatever ran before
    it in this process: an unseeded `torch.randn` draws the same numbers alone and in the whole suite."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory) -> Path:
    """The generated dataset (VOC train 30, val 16, SBD-only 26): never modify it in a test."""
    return synthetic.generate(tmp_path_factory.mktemp("voc"), seed=0)


@pytest.fixture(scope="session")
def voc_small(voc_root, tmp_path_factory) -> Path:
    """The generated dataset with its VOC images and masks at a quarter of their size (SBD's unchanged): for
    tests that evaluate whole images many times (multi-scale + flip) on their own canvas
    (`model.eval_canvas: null`). Never modify it in a test."""
    import shutil

    from helpers import shrink_voc_images

    return shrink_voc_images(Path(shutil.copytree(voc_root, tmp_path_factory.mktemp("voc-small") / "voc")), 4)


@pytest.fixture
def voc_copy(voc_root, tmp_path) -> Path:
    """A private copy of the generated dataset that a test may corrupt."""
    import shutil

    return Path(shutil.copytree(voc_root, tmp_path / "voc"))


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
    """(dataset root, run directory, last.ckpt) of 2 training steps (MobileNetV2, decoder) on the generated
    5-class folder dataset: the trained checkpoint that prediction, export and checkpoint checks use. Trained in
    this process (no interpreter of its own); never modify it in a test (copy it)."""
    from helpers import fit_args, run_in_process

    tmp = tmp_path_factory.mktemp("shapes")
    root = synthetic.generate_folder(tmp / "data", n_train=8, n_val=4)
    run_dir = tmp / "run"
    run_in_process(*fit_args("datamodules.folder.FolderDataModule", root, run_dir))
    os.environ.pop("WANDB_SERVICE", None)  # the tests' own subprocesses start their own W&B service
    return root, run_dir, next(run_dir.rglob("last.ckpt"))
