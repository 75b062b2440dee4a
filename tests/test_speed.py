"""Speed figures that are true."""
from __future__ import annotations

import json
import re

import pytest

from experiments.train import main
from lightning_modules.run.wandb_offline import read_runs
from helpers import ROOT, finish_wandb, tiny_args


def test_logged_train_rate_is_the_wall_clock_rate(voc_root, tmp_path):
    """Every logged `speed/train_images_per_s` is images over the wall time since the previous logging point,
    loader wait included (no loader workers here, so decoding is a large share of each step)."""
    run_dir, times = tmp_path / "run", tmp_path / "times.json"
    callback = {"class_path": "helpers.StepTimes", "init_args": {"path": str(times)}}
    try:  # in this process: a new interpreter would spend longer importing than training
        main(["fit", *tiny_args(voc_root, run_dir, max_steps=12), "--trainer.log_every_n_steps=3",
              "--trainer.limit_val_batches=0", f"--trainer.callbacks+={json.dumps(callback)}"])
    finally:
        finish_wandb()
    (run,) = read_runs(run_dir)
    clock = json.loads(times.read_text())
    ends = {int(step): t for step, t in clock["ends"].items()}
    logged = dict(run.metric("speed/train_images_per_s"))
    assert sorted(logged) == [3, 6, 9, 12]
    previous = clock["start"]
    for step in sorted(logged):
        wall = 3 * clock["batch_size"] / (ends[step] - previous)
        assert logged[step] == pytest.approx(wall, rel=0.1), step
        previous = ends[step]
    total = 12 * clock["batch_size"] / (ends[12] - clock["start"])
    assert 12 / sum(3 / rate for rate in logged.values()) == pytest.approx(total, rel=0.1)
    split = {key: dict(run.metric(f"speed/{key}_ms_per_step")) for key in ("train", "data_wait", "compute")}
    for step in logged:
        assert split["data_wait"][step] > 0 and split["compute"][step] > 0
        assert split["data_wait"][step] + split["compute"][step] == pytest.approx(split["train"][step])


def test_benchmark_command_measures_every_phase(voc_small, monkeypatch, capsys):
    """`experiments.measure.benchmark` on the small-run overlay: every phase reports, and the final ratio line
    (in this process: the phases, not the interpreter start, are under test)."""
    from experiments.measure import benchmark

    monkeypatch.setenv("WANDB_MODE", "offline")  # the benchmark logs each phase offline (restored after the test)
    monkeypatch.chdir(ROOT)
    benchmark.main(["--config", "experiments/configs/quickstart.yaml", "--config", "experiments/configs/smoke.yaml",
                    "--steps", "2", "--warmup", "1", "--eval-images", "2", f"--data.root={voc_small}",
                    "--model.eval_canvas=null"])
    out = capsys.readouterr().out
    for phase in ("bare loop (before)", "lightning fit", "bare loop (after)", "data loader alone", "lightning validate"):
        assert re.search(rf"{re.escape(phase)} +[\d.]+ img/s", out), phase
    assert re.search(r"^lightning/bare \d+\.\d+$", out, re.M)
    assert re.search(r"steady state, median step bare \(before\) [\d.]+ ms, lightning [\d.]+ ms", out)
    assert len(re.findall(r"lightning/bare \(eval\) +\d+\.\d+", out)) == 2  # single scale, MS + flip
