"""Running a plan's jobs: here, one after another (`local`), or as SLURM jobs that wait on each other
through dependencies (`slurm`: submit and walk away).

A SLURM job's id and log live in `slurm.json` in its run directory. A job is *done* when its run's
`results.json` says the stage finished; *pending*/*running* while SLURM says so; *failed* otherwise once
it was submitted. Submitting again leaves done, pending and running jobs alone and resubmits the rest.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .plan import REPO, Job

#: SLURM states of a job that will still run (or is running)
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT"}
TRAIN_SCRIPT = REPO / "experiments" / "slurm" / "train.sbatch"


class LaunchError(RuntimeError):
    """A job failed or could not be submitted; the message names it and its log."""


def run_local(jobs: list[Job]) -> None:
    """One after another in this process's environment; a finished job is skipped."""
    for job in jobs:
        if job.done:
            print(f"[{job.kind}] {job.run_dir} finished earlier, skipped", flush=True)
            continue
        print(f"[{job.kind}] {job.run_dir}", flush=True)
        result = subprocess.run([sys.executable, "-m", "experiments.train", *job.args], cwd=REPO)
        if result.returncode != 0 or not job.done:
            raise LaunchError(f"{job.name} failed (exit {result.returncode}): its output is above; "
                              f"run the table again to retry it")


@dataclass
class Cluster:
    """`sbatch` settings for every row (command-line options or a YAML file of the same names)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "24:00:00"
    constraint: str | None = None
    gpus_per_row: int = 1
    processes_per_row: int | None = None  # default: one per GPU (at least one)
    cpus_per_gpu: int = 8

    @classmethod
    def from_yaml(cls, path: str | Path) -> dict:
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = {k.replace("-", "_") for k in data} - known
        if unknown:
            raise ValueError(f"{path}: unknown cluster settings {sorted(unknown)}; expected some of {sorted(known)}")
        return {k.replace("-", "_"): v for k, v in data.items()}

    @property
    def processes(self) -> int:
        return self.processes_per_row or max(self.gpus_per_row, 1)

    def sbatch_options(self, job: Job) -> list[str]:
        options = [f"--{name}={value}" for name, value in (("partition", self.partition), ("account", self.account),
                                                           ("qos", self.qos), ("time", self.time),
                                                           ("constraint", self.constraint)) if value]
        tasks = job.processes if job.kind == "train" else 1
        options += ["--nodes=1", f"--ntasks-per-node={tasks}"]
        if job.kind == "train":  # also 0: train.sbatch asks for one GPU by default
            options.append(f"--gpus-per-node={job.gpus}")
        elif job.gpus > 0:
            options.append("--gpus-per-node=1")
        return [*options, f"--cpus-per-task={self.cpus_per_gpu}"]  # one task per GPU


def slurm_record(job: Job) -> dict:
    path = job.run_dir / "slurm.json"
    return json.loads(path.read_text()) if path.exists() else {}


def slurm_state(job_id: str) -> str:
    """SLURM's state of a job ("" once SLURM has forgotten it)."""
    result = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout.strip() else ""


def status(job: Job) -> tuple[str, str | None, str | None]:
    """(state, SLURM job id, log path): done / pending / running / failed / not submitted."""
    record = slurm_record(job)
    job_id, log = record.get("job_id"), record.get("log")
    if job.done:
        return "done", job_id, log
    if not job_id:
        return "not submitted", None, None
    state = slurm_state(job_id)
    if state in ACTIVE:
        return ("running" if state in ("RUNNING", "COMPLETING") else "pending"), job_id, log
    return "failed", job_id, log


def _sbatch(options: list[str], script: list[str]) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", *options, *script], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise LaunchError(f"sbatch {' '.join(options)} failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def submit_slurm(jobs: list[Job], cluster: Cluster, table_name: str, report_command: list[str], work: Path) -> list[str]:
    """Submit every job that is not done, pending or running, evaluations after their trainings (afterok),
    and a summary job after the evaluations (afterany: a partial table is still written). Returns the
    ids submitted now."""
    submitted: list[str] = []
    active: dict[str, str] = {}  # job name → id of a SLURM job that will still run it
    for job in jobs:
        state, job_id, _ = status(job)
        if state == "done":
            continue
        if state in ("pending", "running"):
            active[job.name] = job_id
            continue
        log = job.run_dir / "slurm-%j.out"
        job.run_dir.mkdir(parents=True, exist_ok=True)
        options = [f"--job-name={table_name}/{job.name}", f"--output={log}", "--open-mode=append", "--requeue",
                   *cluster.sbatch_options(job)]
        parent = job.depends_on and active.get(job.depends_on.name)
        if parent:
            options.append(f"--dependency=afterok:{parent}")
        if job.kind == "train":  # the requeueing template: SIGUSR1 → checkpoint at a step boundary → requeue
            first, *more = job.configs
            more_configs = [a for c in more for a in ("--config", c)]
            options.append("--signal=B:USR1@300")
            script = [str(TRAIN_SCRIPT), first, *more_configs, *job.overrides]
        else:
            command = shlex.join([sys.executable, "-m", "experiments.train", *job.args])
            script = ["--wrap", f"srun {command}"]
        job_id = _sbatch(options, script)
        (job.run_dir / "slurm.json").write_text(json.dumps(
            {"job_id": job_id, "log": str(log).replace("%j", job_id), "options": options}, indent=1))
        active[job.name] = job_id
        submitted.append(job_id)
        print(f"submitted {job.name}: SLURM job {job_id}", flush=True)
    evaluations = [active[j.name] for j in jobs if j.kind == "eval" and j.name in active]
    if submitted and evaluations:
        summary = _sbatch([f"--job-name={table_name}/summary", f"--output={work / 'slurm-summary-%j.out'}",
                           f"--dependency=afterany:{':'.join(evaluations)}", "--ntasks=1", "--cpus-per-task=1",
                           *(f"--{k}={v}" for k, v in (("partition", cluster.partition), ("account", cluster.account),
                                                        ("qos", cluster.qos)) if v)],
                          ["--wrap", shlex.join(report_command)])
        submitted.append(summary)
        print(f"submitted the summary: SLURM job {summary} (after the evaluations)", flush=True)
    return submitted
