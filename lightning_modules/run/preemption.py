"""Preemption: SIGTERM, SIGINT and SLURM's SIGUSR1 stop a fit at a step boundary with a checkpoint that
resumes exactly; on SLURM the job requeues itself."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

#: the exit status of a run stopped by a signal, as a shell reports a process killed by it
STOP_STATUS = {int(signal.SIGTERM): 143, int(signal.SIGINT): 130}


class Preemption(L.Callback):
    """A signal during `fit` finishes the running step, saves `hpc_ckpt_<step>.ckpt` in the run directory,
    prints one line naming it and stops; the run resumes exactly from it with `--ckpt_path last`. During a
    validation it stops at the next val batch (`ValidationStopped`) and the resumed run validates again; at a
    step a validation follows, the resumed run does that validation first (`validation_due`).

    - SIGTERM (Kubernetes, spot VMs, most batch systems, `scancel`) and SIGINT (Ctrl+C): the process exits
      with 143 or 130 (`STOP_STATUS`, set by `experiments.train`), so `fit ... && validate ...` and job
      runners do not take the stopped run for a finished one.
    - SIGUSR1 under SLURM (`#SBATCH --signal=USR1@<s>` before the time limit, or a preemption notice): once
      training has shut down, the W&B run is closed (so its log is complete) and the job is requeued with
      `scontrol requeue`; the requeued job runs the same command with `--ckpt_path last`.

    The callback owns these signals while training runs. Lightning's SIGTERM handling would stop in the
    middle of a validation and exit with status 0 (its `SIGTERMException` is a `SystemExit` without a
    code), its SIGINT raises `KeyboardInterrupt` wherever the step is, and its SLURM auto-requeue saves
    from inside the handler, even mid optimizer update (the SLURM config turns it off). Here a handler only
    records the signal: a second one while the checkpoint is written changes nothing, and the file is
    written atomically (`checkpointing.AtomicCheckpointIO`). A signal that comes before training starts or
    after it ends gets Lightning's handling.
    """

    def __init__(self, requeue_signal: int = int(signal.SIGUSR1),
                 stop_signals: Sequence[int] = (int(signal.SIGTERM), int(signal.SIGINT))) -> None:
        self.requeue_signal = requeue_signal
        self.stop_signals = tuple(stop_signals)
        self.received: int | None = None  # the first signal of this fit
        self.stopped_by: int | None = None  # the signal the fit stopped for, after its checkpoint
        self.checkpoint: Path | None = None
        self._previous: dict[int, object] = {}
        self._launcher = None
        self._validation_stop = False  # saving at a val batch: the resumed run redoes that validation
        self._validation_due = False  # saving at a step a validation follows: the resumed run does it first

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = self.stopped_by = self.checkpoint = None
        if threading.current_thread() is not threading.main_thread():
            return  # Python takes signals in the main thread only
        self._launcher = trainer.strategy.launcher
        signums = list(self.stop_signals)
        if SLURMEnvironment.detect():
            signums.append(self.requeue_signal)
            rank_zero_info(f"SLURM job {os.environ.get('SLURM_JOB_ID')} (restart "
                           f"{os.environ.get('SLURM_RESTART_COUNT', '0')}): requeue on signal {self.requeue_signal}")
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            if self._launcher is not None:  # processes this one started (DDP) stop at the same step
                self._launcher.kill(signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1:
            if self.received is None:
                return
        # any rank that got the signal decides for all, so every rank stops after the same step; the
        # all-reduce is a host sync, so ranks agree every `log_every_n_steps` steps
        elif trainer.global_step % trainer.log_every_n_steps or not trainer.strategy.reduce_boolean_decision(
                self.received is not None, all=False):
            return
        signum = self.received if self.received is not None else self.stop_signals[0]  # another rank's
        if 0 < trainer.max_steps <= trainer.global_step:
            return  # the last step: training ends here anyway, with its final checkpoint
        # a validation due after this step is done by the resumed run first (Lightning's resume would skip it)
        self._validation_due = validation_due(trainer)
        # before the save: Lightning logs this batch at a stop, and the run record stores that in the checkpoint
        trainer.should_stop = True
        # Lightning validates a run that stops early; a grace period (Kubernetes: 30 s) is no time for a
        # whole val set, and the resumed run validates where the schedule says
        trainer.limit_val_batches = 0
        try:
            self._save(trainer, signum, " (the validation due at this step runs on resume)"
                       if self._validation_due else "")
        finally:
            self._validation_due = False

    def _save(self, trainer: L.Trainer, signum: int, when: str) -> None:
        path = Path(trainer.default_root_dir) / f"hpc_ckpt_{trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        self.stopped_by, self.checkpoint = signum, path
        action = "requeueing the job" if self.requeue_pending else "resume with --ckpt_path last"
        rank_zero_info(f"Signal {signal.Signals(signum).name}{when}: saved {path} at step {trainer.global_step}; "
                       f"{action}")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        """A signal during a validation inside `fit` ends it at the next batch: the training state is saved
        as it was before the validation, which the resumed run then does again from its first batch (the
        scores of a part of the val set are never logged)."""
        if trainer.state.fn != "fit" or trainer.sanity_checking or not self._previous:
            return
        if trainer.world_size == 1:
            if self.received is None:
                return
        elif not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return  # every rank checks at every val batch, so all stop at the same one
        self._validation_stop = True
        try:
            self._save(trainer, self.received if self.received is not None else self.stop_signals[0],
                       " during validation (it runs again on resume)")
        finally:
            self._validation_stop = False
        raise ValidationStopped(self.exit_status)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._validation_stop:
            redo_validation(checkpoint)
        elif self._validation_due:
            complete_batch(checkpoint)
            redo_validation(checkpoint, started=False)

    @property
    def requeue_pending(self) -> bool:
        return self.stopped_by == self.requeue_signal

    @property
    def exit_status(self) -> int:
        """0 unless a stop signal ended the fit early (a requeued SLURM job is ended by SLURM itself)."""
        return STOP_STATUS.get(self.stopped_by, 0) if self.stopped_by is not None else 0

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if self.received is not None and self.stopped_by is None:
            rank_zero_info(f"Signal {signal.Signals(self.received).name} came with the last step: the run is complete")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()
        self._after_stop(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()  # Lightning calls no teardown hook after an exception
        if isinstance(exception, ValidationStopped):
            self._after_stop(trainer)

    def _after_stop(self, trainer: L.Trainer) -> None:
        """Close the W&B run of a stopped fit (so its log is complete) and requeue a SLURM job."""
        if self.stopped_by is None or not trainer.is_global_zero:
            return
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            import wandb

            if wandb.run is not None:  # the logger's run, if it started one (public: no logger internals)
                wandb.run.finish(exit_code=self.exit_status)  # flush the run's log before the process ends
        if self.requeue_pending:
            requeue()


class ValidationStopped(SystemExit):
    """Ends a `fit` stopped by a signal during a validation, once its checkpoint is saved: Lightning has no
    public way to leave a validation loop half-way but an exception (it runs `on_exception` and tears the
    trainer down). A SystemExit carrying the exit status (`STOP_STATUS`), so the process ends with it."""


def validation_due(trainer: L.Trainer) -> bool:
    """Whether Lightning validates after the training batch now ending (at `on_train_batch_end`): the rule of
    its training epoch loop for step and epoch schedules, which it keeps private, read from public Trainer
    attributes. A time-based `val_check_interval` (no
    `val_check_batch`) is not known ahead, and counts as not due."""
    if not trainer.enable_validation or trainer.val_check_batch is None:
        return False
    every_n_epochs = trainer.check_val_every_n_epoch
    if every_n_epochs is not None and (trainer.current_epoch + 1) % every_n_epochs:
        return False
    if trainer.val_check_batch == float("inf"):
        return trainer.is_last_batch
    loop = trainer.fit_loop.epoch_loop
    batch = loop.total_batch_idx if every_n_epochs is None else loop.batch_idx
    return (batch + 1) % trainer.val_check_batch == 0


def complete_batch(checkpoint: dict) -> None:
    """Count the training batch of a checkpoint saved at `on_train_batch_end` as completed, as Lightning does
    right after that hook: the checkpoint then reads as saved where the validation after that batch begins."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for counts in (progress["current"], progress["total"]):
        counts["completed"] = counts["processed"]


def redo_validation(checkpoint: dict, started: bool = True) -> None:
    """Make a checkpoint saved at a validation batch resume into that validation from its first batch.

    Lightning resumes a validation it finds started in a checkpoint (`restarted_mid_evaluation`: a batch
    started and not processed), running it again from the val loader's first batch, and then trains on;
    a checkpoint saved between two val batches (what a callback can do) reads instead as a finished
    validation, which the resumed run would skip. The validation's progress counters are set to its first
    batch started: the training state, saved before the validation, is untouched. `started=False`: saved
    before the validation began (its counters still hold the previous validation's)."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    # batches of earlier validations
    before = progress["total"]["completed"] - (progress["current"]["completed"] if started else 0)
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["total"] = {"ready": before + 1, "started": before + 1, "processed": before, "completed": before}
    progress["is_last_batch"] = False


def requeue() -> None:
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task else os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        rank_zero_info(f"Requeued SLURM job {job_id}")
    else:
        rank_zero_warn(f"scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}")
