"""Every config in experiments/configs/ goes through the real CLI: a few training steps with the small-run
overlay (`smoke.yaml`) and a validation — a config that no longer parses, builds or evaluates fails here, not on
a cluster."""
from __future__ import annotations


import pytest

from helpers import ROOT, console_of_run

CONFIGS = sorted(p.name for p in (ROOT / "experiments" / "configs").glob("*.yaml") if p.name != "smoke.yaml")


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fits_and_validates(config, voc_small, tmp_path, request):
    run_dir = tmp_path / "run"
    data = [f"--data.root={voc_small}", "--model.eval_canvas=null"]  # small images, each on its own canvas
    if config.startswith("cityscapes"):
        # its own generated layout; the official 1025×2049 canvas would take minutes per image on a CPU
        data = [f"--data.root={tmp_path / 'cityscapes'}", "--model.eval_canvas=null"]
    # in this process: 2 steps, then the validation at step 2 (validate from a checkpoint: test_training.py, and
    # test_official.py for an imported one)
    console = console_of_run(request, "fit", "--config", f"experiments/configs/{config}", "--config",
                             "experiments/configs/smoke.yaml", *data, f"--trainer.logger.init_args.save_dir={run_dir}",
                             "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1")
    assert "val/mIoU" in console
    assert next(run_dir.rglob("last.ckpt")).is_file()
