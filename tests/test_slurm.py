"""Training on a real SLURM (slurmctld/slurmd + munge on loopback, started here):
SIGUSR1 → checkpoint + requeue → exact resume; the ablation runner's `--launcher slurm`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from lightning_modules.run.wandb_offline import read_runs
from helpers import run_in_process, tiny_args

HERE = Path(__file__).resolve().parent / "slurm"


def _can_run_slurm() -> str | None:
    """Why this machine cannot start the local cluster, or None. SLURM is installed by `.ci/run` (or by hand:
    `apt-get install --no-install-recommends slurmctld slurmd slurm-client munge`), never by a test."""
    search = f"{os.environ['PATH']}{os.pathsep}/usr/sbin"
    missing = [name for name in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(name, path=search) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found); .ci/run installs it, or "
                "apt-get install --no-install-recommends slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "needs root to start munged/slurmctld/slurmd"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _can_run_slurm()
    if reason:
        pytest.skip(f"this machine cannot run the local SLURM: {reason}")
    work = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(HERE / "start.sh"), str(work)], capture_output=True, text=True, timeout=120)
    env = {**os.environ, "SLURM_CONF": str(work / "etc" / "slurm.conf"), "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "PYTHON": sys.executable, "PATH": f"{HERE}:{os.environ['PATH']}"}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        subprocess.run(["bash", str(HERE / "stop.sh"), str(work)], capture_output=True, timeout=120)
        leftovers = subprocess.run("ps -eo cmd | grep -E '^(slurmctld|slurmd|slurmstepd|/usr/sbin/munged)' || true",
                                   shell=True, capture_output=True, text=True).stdout
        assert not leftovers.strip(), f"daemons left running: {leftovers}"


def _squeue(env, job_id: str, fmt: str) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", fmt], env=env, capture_output=True,
                          text=True).stdout.strip()


def test_sigusr1_requeues_and_resumes_exactly(slurm, voc_root, tmp_path):
    steps = 60
    overrides = tiny_args(voc_root, tmp_path / "job", steps)[2:]  # train.sbatch takes the first config itself
    reference = tmp_path / "reference"
    run_in_process("fit", *tiny_args(voc_root, reference, steps), "--trainer.limit_val_batches=0")

    log = tmp_path / "job.log"
    t0 = time.time()
    timeline = []

    def mark(event: str) -> None:
        timeline.append(f"{time.time() - t0:6.1f}s {event}")

    submit = subprocess.run(["sbatch", "--parsable", f"--output={log}", f"--chdir={ROOT}", "--gpus-per-node=0",
                             "--cpus-per-task=2", "--signal=B:USR1@5", "--time=10:00",
                             str(ROOT / "experiments/slurm/train.sbatch"), "experiments/configs/quickstart.yaml",
                             *overrides, "--trainer.limit_val_batches=0"],
                            env=slurm, capture_output=True, text=True, check=True)
    job_id = submit.stdout.strip()
    mark(f"submitted job {job_id}")
    deadline = time.time() + 300
    while time.time() < deadline and "requeue on signal" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    mark("training started")
    time.sleep(3)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm, check=True)
    mark("sent SIGUSR1 to the batch shell")
    seen = set()
    while time.time() < deadline:
        state = _squeue(slurm, job_id, "%T")
        if state not in seen:
            seen.add(state)
            mark(f"state {state}")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", ""):
            break
        time.sleep(0.3)
    text = log.read_text()
    print("\n".join(timeline))
    print(text[-4000:])
    assert _squeue(slurm, job_id, "%T") == "COMPLETED"
    assert re.search(r"job \d+ restart 0 on", text) and re.search(r"job \d+ restart 1 on", text)
    saved = re.search(r"saved (\S+hpc_ckpt_(\d+)\.ckpt) at step (\d+)", text)
    assert saved and 0 < int(saved.group(3)) < steps
    assert f"Resuming from {saved.group(1)}" in text

    job_dir = tmp_path / "job"
    a = torch.load(next(reference.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    b = torch.load(next(job_dir.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert b["global_step"] == steps
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    runs = read_runs(job_dir)
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id
    assert [s for s, _ in runs[0].metric("train/loss")] == list(range(int(saved.group(3))))
    assert [s for s, _ in runs[1].metric("train/loss")] == list(range(int(saved.group(3)), steps))


def test_table_on_slurm_submits_returns_and_reports_with_two_process_ddp(slurm, voc_root, tmp_path, monkeypatch,
                                                                        capsys):
    """The runner in this process (submitting, `--status`, as a user runs it from a login node); the jobs on
    the local SLURM."""
    from ablations import table1_decoder_channels
    from ablations.runner import main

    out = tmp_path / "results"
    args = ["--profile", "smoke", "--rows", "proj48", "--data-root", str(voc_root), "--out", str(out)]
    cluster = ["--launcher", "slurm", "--gpus-per-row", "0", "--processes-per-row", "2", "--cpus-per-gpu", "1",
               "--time", "20:00"]
    for key, value in {**slurm, "WANDB_MODE": "disabled"}.items():
        monkeypatch.setenv(key, value)  # the jobs inherit the submitting environment, as sbatch's --export=ALL
    monkeypatch.chdir(ROOT)

    def run(*extra: str) -> str:
        capsys.readouterr()
        assert main(table1_decoder_channels.TABLE, [*args, *extra]) == 0
        return capsys.readouterr().out

    first = run(*cluster)  # returns at once: nothing waits here
    returned = time.time()
    assert "submitted 3 SLURM jobs; nothing waits here" in first  # train, eval, summary
    assert run(*cluster).count("submitted 0 SLURM jobs") == 1  # pending or running: nothing submitted twice
    states = set()
    deadline = time.time() + 600
    while time.time() < deadline:
        lines = [line.split() for line in run("--status").splitlines() if line.startswith(("train-", "eval-"))]
        states |= {line[1] for line in lines}
        if all(line[1] == "done" for line in lines):
            break
        assert not any(line[1] == "failed" for line in lines), lines
        time.sleep(2)
    assert "done" in states and states <= {"pending", "running", "done"}, states
    (train_dir,) = (out / "table1_decoder_channels" / "smoke").glob("train-*")
    # the training finished after the submission returned (on a loaded machine the first `--status` may
    # already see it done, so the states seen do not prove it)
    assert (train_dir / "results.json").stat().st_mtime > returned
    results = json.loads((train_dir / "results.json").read_text())["fit"]
    # two DDP processes through Lightning's SLURM environment, the global batch unchanged (4 = 2 × 2)
    assert results["metadata"]["global_batch_size"] == 4 and results["metadata"]["per_process_batch_size"] == 2
    assert results["metadata"]["slurm_job_id"] == json.loads((train_dir / "slurm.json").read_text())["job_id"]
    deadline = time.time() + 120  # the summary job writes the table once the evaluation is done
    table = out / "table1_decoder_channels-smoke.md"
    while time.time() < deadline and not table.exists():
        time.sleep(1)
    assert "| proj48 | 78.21% |" in table.read_text()
