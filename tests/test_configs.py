"""Every config in experiments/configs/ goes through the real CLI: a few training steps with the small-run
overlay (`smoke.yaml`), then `validate` from the checkpoint it wrote — a config that no longer parses or
builds fails here, not on a cluster."""
from __future__ import annotations


import pytest

from helpers import ROOT, run_cli

CONFIGS = sorted(p.name for p in (ROOT / "experiments" / "configs").glob("*.yaml") if p.name != "smoke.yaml")


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fits_and_validates(config, voc_root, tmp_path):
    run_dir = tmp_path / "run"
    data = [f"--data.root={voc_root}"]
    if config.startswith("cityscapes"):
        # its own generated layout; the official 1025×2049 canvas would take minutes per image on a CPU
        data = [f"--data.root={tmp_path / 'cityscapes'}", "--model.eval_canvas=null"]
    common = ["--config", f"experiments/configs/{config}", "--config", "experiments/configs/smoke.yaml",
              *data, "--trainer.logger.init_args.save_dir"]
    run_cli("fit", *common, str(run_dir), "--trainer.max_steps=2", "--trainer.limit_val_batches=0")
    checkpoint = next(run_dir.rglob("last.ckpt"))
    result = run_cli("validate", *common, str(tmp_path / "eval"), f"--ckpt_path={checkpoint}")
    assert "val/mIoU" in result.stdout
