"""Runs written before the code moved into sub-packages keep working: their `config.yaml` (whose class_paths
name the old modules) trains, resumes and validates on this code. The checkpoint itself names no module of
ours but `datamodules.voc_datamodule.VOCDataModule` (the datamodule's hyperparameters), which did not move."""
from __future__ import annotations

from pathlib import Path

import yaml

from experiments import train
from lightning_modules import OLD_MODULES
from lightning_modules.run.checkpoints import read_step
from lightning_modules.run.record import read_results

from conftest import ROOT

OLD_CONFIG = ROOT / "tests/fixtures/config_before_rooms.yaml"


def class_paths(tree) -> set[str]:
    if isinstance(tree, dict):
        return {v for k, v in tree.items() if k == "class_path"} | {p for v in tree.values() for p in class_paths(v)}
    return {p for v in tree for p in class_paths(v)} if isinstance(tree, list) else set()


def test_old_config_resumes_and_validates(voc_root, tmp_path):
    old = {path.rsplit(".", 1)[0] for path in class_paths(yaml.safe_load(OLD_CONFIG.read_text()))}
    assert old & set(OLD_MODULES), "the fixture no longer holds old module paths"
    run_dir = tmp_path / "run"
    args = ["--config", str(OLD_CONFIG), f"--data.root={voc_root}", f"--trainer.logger.init_args.save_dir={run_dir}",
            "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
            "--trainer.precision=32-true"]  # the old run's bf16 is emulated, several times slower, on most CPUs

    train.main(["fit", *args, "--trainer.max_steps=1"])
    # resumes the step-1 checkpoint and trains one step longer: a change of the run, asked for
    train.main(["fit", *args, "--trainer.max_steps=2", "--ckpt_path=last", "--resume_changes=apply"])
    last = next(run_dir.rglob("last.ckpt"))
    assert read_step(last) == 2
    fit = read_results(run_dir)["fit"]
    assert fit["finished"] is True and fit["step"] == 2

    train.main(["validate", *args, "--ckpt_path=last"])
    validate = read_results(run_dir)["validate"]
    assert validate["finished"] is True and 0 <= validate["metrics"]["val/mIoU"] <= 1
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert Path(saved["trainer"]["default_root_dir"]) == run_dir
