"""wandb has no public reader of offline runs, so `lightning_modules/run/wandb_offline.py` reads its file
format. These tests fail with a message naming that module when a wandb release changes the format."""
from __future__ import annotations

import struct

import pytest
import wandb

from lightning_modules.run.record import METRICS_FILE, read_records
from lightning_modules.run.wandb_offline import WandbFormatError, read_run, read_runs


def test_reads_what_the_installed_wandb_wrote(shapes_run):
    _, run_dir, _ = shapes_run
    try:
        runs = read_runs(run_dir)
    except WandbFormatError as e:
        pytest.fail(str(e))
    assert runs, f"no run-*.wandb under {run_dir}: wandb {wandb.__version__} stores offline runs elsewhere"
    logged = {(r["step"], k): v for r in read_records(run_dir / METRICS_FILE) for k, v in r["metrics"].items()
              if k == "train/loss"}
    held = {(row["trainer/global_step"], "train/loss"): row["train/loss"]
            for run in runs for row in run.history if "train/loss" in row}
    assert logged and held == logged, (
        f"wandb {wandb.__version__}: the offline history read by lightning_modules/run/wandb_offline.py differs "
        f"from metrics.jsonl; did wandb change its record format? read {held}, logged {logged}")
    assert runs[-1].project == "deeplabv3plus" and runs[-1].config, "run record or config not read"


def test_a_changed_file_version_is_named(shapes_run, tmp_path):
    _, run_dir, _ = shapes_run
    data = bytearray(next(run_dir.rglob("run-*.wandb")).read_bytes())
    data[4:7] = struct.pack("<HB", 0xBEE1, 1)  # the header's format version
    changed = tmp_path / "run-x.wandb"
    changed.write_bytes(bytes(data))
    with pytest.raises(WandbFormatError, match=r"version 1, expected 0xbee1 version 0; wandb .* changed its "
                                               r"offline run format, which lightning_modules/run/wandb_offline.py"):
        read_run(changed)
