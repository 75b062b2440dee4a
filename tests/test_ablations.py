"""Ablation tables: plans, seeds with mean ± std, results read from the runs' own files, idempotent reruns
after a kill (SLURM: tests/test_slurm.py)."""
from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablations import (precision, table1_decoder_channels, table2_decoder_structure, table3_output_stride,
                       table5_xception)
from ablations.plan import Plan
from ablations.runner import main
from conftest import ROOT
from experiments.cli.parse_only import net_kwargs
from experiments.paper import TABLE1, TABLES
from lightning_modules.components.complexity import build_on_meta
from lightning_modules.components.deeplab import DeepLabV3Plus


@pytest.mark.parametrize("module,trainings,evaluations", [
    (table1_decoder_channels, 5, 5), (table2_decoder_structure, 6, 6),
    (table3_output_stride, 4, 14), (table5_xception, 3, 16), (precision, 3, 3),
])
def test_dry_run_prints_every_row_with_both_multiply_adds(module, trainings, evaluations, capsys):
    assert main(module.TABLE, ["--dry-run"]) == 0
    out = capsys.readouterr().out
    for row in module.TABLE.rows:
        line = next(l for l in out.splitlines() if l.startswith(row.name + " "))
        paper, tf, plain = line.split()[-4:-1]  # then the paper's mIoU
        assert paper == (f"{row.paper_multiply_adds:.2f}B" if row.paper_multiply_adds else "-"), line
        # the TF count adds the space-to-batch padding of atrous convolutions to what this code executes
        assert tf.endswith("B") and plain.endswith("B") and float(tf[:-1]) >= float(plain[:-1]) > 0, line
    assert f"{trainings} trainings, {evaluations} evaluations" in out
    if module is table5_xception:
        assert out.count("not reproducible here") == 8


def test_table3_switches_to_the_papers_resnet101_beta(tmp_path, capsys, monkeypatch):
    """`--config resnet101_beta_os16.yaml`: the same rows on the official backbone, counted on the network that
    trains (plain 76.05B at OS16, TF-counted within 0.3% of the paper's 81.02B), in run directories of their own."""
    monkeypatch.chdir(ROOT)  # the config path as a user gives it, from the repository
    beta = "experiments/configs/resnet101_beta_os16.yaml"
    assert main(table3_output_stride.TABLE, ["--dry-run", "--config", beta]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("train16-eval16 "))
    paper, tf, plain = (float(v[:-1]) for v in line.split()[3:6])
    assert plain == 76.05 and abs(tf / paper - 1) < 0.003, line
    jobs = Plan(table3_output_stride.TABLE, "paper", tmp_path, extra_configs=[beta]).jobs()
    assert all(beta in job.args and job.run_dir.parent.name == "paper+resnet101_beta_os16" for job in jobs)


@pytest.mark.parametrize("table", TABLES.values(), ids=lambda table: table.name)
def test_every_tables_small_run_builds_each_rows_network(table):
    """`--profile smoke` layers MobileNetV2 configs over the table's config; a row's own settings must still
    make a network (Table 3's rows set multi-grid, which only ResNets have: its small run keeps a ResNet)."""
    plan = Plan(table, "smoke")
    for row in plan.trainings().values():  # the rows a training stands for differ in evaluation settings only
        kwargs = net_kwargs(plan.resolved(row))
        assert kwargs["weights"] is None, row.name  # the small run downloads nothing
        build_on_meta(lambda: DeepLabV3Plus(**kwargs))
        if table.name == "table3_output_stride":
            assert kwargs["backbone"] == "resnet50" and kwargs["multi_grid"] == [1, 2, 4], row.name


def test_a_row_no_network_can_be_built_for_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    """Table 3's rows set multi-grid; a config that makes them MobileNetV2 is refused naming the row, the configs
    and the option, in the dry run as in a real run, before any run folder exists."""
    monkeypatch.chdir(ROOT)
    mobilenet = "experiments/configs/mobilenetv2_os16.yaml"
    for mode in (["--dry_run"], ["--output", str(tmp_path / "results")]):
        with pytest.raises(SystemExit) as exit_:
            main(table3_output_stride.TABLE, [*mode, "--config", mobilenet])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert (f"error: row train16-eval16 (experiments/configs/resnet101_os16.yaml + {mobilenet}): "
                "--model.net.init_args.multi_grid: expected null with 'mobilenet_v2'") in err, err
        assert "Traceback" not in err and not (tmp_path / "results").exists()


def test_seeds_multiply_trainings_and_tag_every_run(tmp_path):
    plan = Plan(TABLE1, "smoke", tmp_path, seeds=[0, 1, 2])
    jobs = plan.jobs()
    trainings, evaluations = [j for j in jobs if j.kind == "train"], [j for j in jobs if j.kind == "eval"]
    assert len(trainings) == len(evaluations) == 15 and {j.seed for j in trainings} == {0, 1, 2}
    for job in evaluations:
        assert job.depends_on.seed == job.seed and job.ckpt_path == str(job.depends_on.run_dir)
        args = " ".join(job.args)
        assert f"--seed_everything={job.seed}" in args and f"--data.seed={job.seed}" in args
        assert "--trainer.logger.init_args.group=table1_decoder_channels" in args
        assert "--trainer.logger.init_args.job_type=eval" in args and "decoder_projection=" in args
        assert job.args[:1] == ["validate"] and "experiments/configs/smoke.yaml" in job.args
    assert len({j.run_dir for j in jobs}) == 30


def test_two_seeds_survive_a_kill_and_rerun_trains_nothing(voc_root, tmp_path, jobs_in_process, wandb_disabled,
                                                          capsys):
    """The runner and its training killed together while the second seed trains (a process of their own); the
    reruns (in this process) skip the finished training, finish the rest, then train and evaluate nothing."""
    out = tmp_path / "results"
    args = ["--profile", "smoke", "--rows", "proj48", "--seeds", "0,1", "--data-root", str(voc_root), "--out", str(out)]
    work = out / "table1_decoder_channels" / "smoke"
    proc = subprocess.Popen([sys.executable, "-m", "ablations.table1_decoder_channels", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def finished_trainings() -> list[Path]:
        return [p for p in work.glob("train-*/results.json") if json.loads(p.read_text())["fit"].get("finished")]

    deadline = time.time() + 300
    while time.time() < deadline and not finished_trainings():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the training it was running
    proc.wait()
    (finished,) = finished_trainings()  # the kill lands while the second seed trains
    first_done = finished.stat().st_mtime

    capsys.readouterr()
    assert main(table1_decoder_channels.TABLE, args) == 0
    assert f"{finished.parent} finished earlier, skipped" in capsys.readouterr().out
    assert finished.stat().st_mtime == first_done

    rows = list(csv.DictReader(open(out / "table1_decoder_channels-smoke.csv")))
    assert [(r["row"], r["seeds"], r["paper_mIoU"]) for r in rows] == [("proj48", "2", "78.21")]
    scores = [100 * json.loads(p.read_text())["validate"]["metrics"]["val/mIoU"] for p in work.glob("eval-*/results.json")]
    assert len(scores) == 2  # the table is the mean ± std of the two seeds' own evaluations
    assert float(rows[0]["ours_mIoU"]) == pytest.approx(statistics.fmean(scores), abs=1e-6)
    assert float(rows[0]["ours_mIoU_std"]) == pytest.approx(statistics.stdev(scores), abs=1e-6)
    assert float(rows[0]["ours_multiply_adds_tf"]) > 0 and rows[0]["git_commits"]
    md = (out / "table1_decoder_channels-smoke.md").read_text()
    assert "| proj48 | 78.21% | " in md and "(n=2)" in md and "partial" not in md
    assert "Multiply-Adds at 513×513 for" in md and "Smoke profile: mobilenet_v2 from scratch" in md
    assert (out / "table1_decoder_channels-smoke.png").read_bytes()[:4] == b"\x89PNG"

    written = {p: p.stat().st_mtime_ns for p in work.glob("*/*")}
    assert main(table1_decoder_channels.TABLE, args) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    # trains and evaluates nothing: no run folder gains, loses or rewrites a file
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/*")} == written
