"""SLURM preemption and time limits: checkpoint at a step boundary, requeue, resume exactly."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class SlurmRequeue(L.Callback):
    """On SIGUSR1 (`#SBATCH --signal=USR1@<s>` before the time limit, or a preemption notice), finish the
    running step, save `hpc_ckpt_<step>.ckpt` in the run directory and stop; once training has shut
    down, close the W&B run (so its log is complete) and `scontrol requeue` the job. The requeued job
    runs the same command with `--ckpt_path last` and continues from that checkpoint.

    Lightning's own auto-requeue saves from inside the signal handler, i.e. wherever the handler
    interrupts the step (even mid optimizer update), so its checkpoint does not resume exactly; the
    SLURM config turns it off (`SLURMEnvironment(auto_requeue=False)`) in favour of this callback.
    Outside SLURM this callback does nothing.
    """

    def __init__(self, signum: int = int(signal.SIGUSR1)) -> None:
        self.signum = signum
        self.requested = False
        self.requeue_pending = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if SLURMEnvironment.detect():
            signal.signal(self.signum, self._on_signal)
            rank_zero_info(f"SLURM job {os.environ.get('SLURM_JOB_ID')} (restart "
                           f"{os.environ.get('SLURM_RESTART_COUNT', '0')}): requeue on signal {self.signum}")

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1:
            if not self.requested:
                return
        # any rank that got the signal decides for all, so every rank stops after the same step; the
        # all-reduce is a host sync, so ranks agree every `log_every_n_steps` steps (the signal comes minutes early)
        elif trainer.global_step % trainer.log_every_n_steps or not trainer.strategy.reduce_boolean_decision(
                self.requested, all=False):
            return
        path = Path(trainer.default_root_dir) / f"hpc_ckpt_{trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(f"Signal {self.signum}: saved {path} at step {trainer.global_step}")
        trainer.should_stop = True
        self.requested, self.requeue_pending = False, True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.requeue_pending or not trainer.is_global_zero:
            return
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            import wandb

            if wandb.run is not None:  # the logger's run, if it started one (public: no logger internals)
                wandb.run.finish()  # the requeue kills this job: flush the run's log first
        requeue()


def requeue() -> None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task else os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        rank_zero_info(f"Requeued SLURM job {job_id}")
    else:
        rank_zero_warn(f"scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}")
