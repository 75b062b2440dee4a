"""`--launcher slurm`: a table's runs as one SLURM job array through submitit, waited for before the
runner moves on (evaluations after trainings, aggregation last)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import submitit

from ablations.runner import REPO, Job, mark_done


class TrainCommand(submitit.helpers.Checkpointable):
    """One `experiments.train` run as a requeueable SLURM task. On preemption or time-out submitit
    resubmits the same command; trainings carry `--ckpt_path last`, so they resume from their newest
    checkpoint and lose at most the steps since it."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self) -> str:
        subprocess.run([sys.executable, "-m", "experiments.train", *self.job.args], cwd=REPO, check=True)
        mark_done(self.job)
        return str(self.job.run_dir)


def launch_slurm(jobs: list[Job], folder: Path) -> None:
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    if os.environ.get("ABLATION_SLURM_PARTITION"):
        executor.update_parameters(slurm_partition=os.environ["ABLATION_SLURM_PARTITION"])
    executor.update_parameters(
        timeout_min=int(os.environ.get("ABLATION_SLURM_TIMEOUT_MIN", 24 * 60)),
        gpus_per_node=int(os.environ.get("ABLATION_SLURM_GPUS", 1)),
        cpus_per_task=int(os.environ.get("ABLATION_SLURM_CPUS", 8)),
        slurm_array_parallelism=int(os.environ.get("ABLATION_SLURM_PARALLEL", 32)),
        slurm_additional_parameters={"requeue": True},
    )
    submitted = executor.submit_array([TrainCommand(job) for job in jobs])
    print(f"submitted {len(submitted)} SLURM jobs: {submitted[0].job_id.split('_')[0]}", flush=True)
    for job in submitted:
        job.result()  # raises with the job's log if it failed
