"""Issue 5: ablation plans, the smoke profile end to end, W&B grouping, idempotent reruns after a kill."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ablations import table1_decoder_channels, table2_decoder_structure, table3_output_stride, table5_xception
from ablations.runner import main
from conftest import ROOT
from experiments.wandb_offline import read_runs


@pytest.mark.parametrize("module,trainings,evaluations", [
    (table1_decoder_channels, 5, 5), (table2_decoder_structure, 6, 6),
    (table3_output_stride, 4, 14), (table5_xception, 3, 16),
])
def test_dry_run_prints_every_row_with_both_multiply_adds(module, trainings, evaluations, capsys):
    assert main(module.TABLE, ["--dry-run"]) == 0
    out = capsys.readouterr().out
    for row in module.TABLE.rows:
        line = next(l for l in out.splitlines() if l.startswith(row.name + " "))
        assert line.count("B") >= (2 if row.paper_multiply_adds else 1), line
    assert f"{trainings} trainings, {evaluations} evaluations" in out
    if module is table5_xception:
        assert out.count("not reproducible here") == 8


def _runner(voc_root, out, *extra):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return [sys.executable, "-m", "ablations.table1_decoder_channels", "--profile", "smoke", "--rows", "proj8,proj48",
            "--data-root", str(voc_root), "--out", str(out), *extra], env


def test_smoke_table1_end_to_end_survives_a_kill(voc_root, tmp_path):
    out = tmp_path / "results"
    cmd, env = _runner(voc_root, out)
    work = out / "table1_decoder_channels" / "smoke"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob("train-*/done.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the training it was running
    proc.wait()
    finished = list(work.glob("train-*/done.json"))
    assert len(finished) == 1, "the kill should land while the second training runs"
    first_done = finished[0].stat().st_mtime

    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished earlier, skipped" in result.stdout
    assert finished[0].stat().st_mtime == first_done
    assert len(read_runs(finished[0].parent)) == 1  # not retrained: one W&B process ever ran there

    rows = list(csv.DictReader(open(out / "table1_decoder_channels-smoke.csv")))
    assert [r["row"] for r in rows] == ["proj8", "proj48"]
    assert all(0 <= float(r["ours_mIoU"]) <= 100 and float(r["ours_multiply_adds"]) > 0 for r in rows)
    assert [float(r["paper_mIoU"]) for r in rows] == [77.61, 78.21]
    md = (out / "table1_decoder_channels-smoke.md").read_text()
    assert "| proj8 | 77.61% |" in md
    assert (out / "table1_decoder_channels-smoke.png").read_bytes()[:4] == b"\x89PNG"

    trainings = [run for d in work.glob("train-*") for run in read_runs(d)]
    evaluations = [run for d in work.glob("eval-*") for run in read_runs(d)]
    assert {r.group for r in trainings + evaluations if r.group} == {"table1_decoder_channels"}
    assert {r.job_type for r in evaluations} == {"eval"} and "train" in {r.job_type for r in trainings}
    for run in evaluations:
        assert {"table1_decoder_channels", "smoke"} <= set(run.tags)
        assert any(t.startswith("decoder_projection=") for t in run.tags)
        assert run.metric("val/mIoU") and run.metric("speed/multiply_adds")
        provenance = run.config["evaluated_run"]
        assert provenance in {json.loads((d / "done.json").read_text())["run_id"] for d in work.glob("train-*")}
        assert run.config["checkpoint"].endswith("last.ckpt")
    summary = [r for r in read_runs(work) if r.job_type == "summary"]
    assert summary and summary[-1].group == "table1_decoder_channels"
