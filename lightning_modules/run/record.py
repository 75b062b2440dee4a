"""The run's own record of what it logged: `metrics.jsonl` as it goes, `results.json` at the end of each stage.

These files, not W&B, are what other tools read back (the ablation runner, tests): they work with
`WANDB_MODE=disabled`, without a login and with any W&B server. Layout of a run directory:

    metrics.jsonl   one line per logging point: {"step": trainer step, "stage": ..., "metrics": {name: float}}
    results.json    {"fit" | "validate" | "test": {"metrics", "step", "checkpoint", "wandb_run_id",
                     "git_commit", "config", "config_changes", "metadata", "finished"}}
"""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from .checkpoints import atomic_write_text, read_checkpoint

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers among logged values (tensors of one element included); media and tables are left out."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class RunFileError(ValueError):
    """A run file that cannot be read back; the message names it and what to do."""


def scan_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """(every readable record of a metrics file, one problem per line that is not one).

    A last line torn by a crash mid-write is cut; a damaged line elsewhere is skipped by number and every
    line after it is kept (one bad line must not hide the rest of the run)."""
    path = Path(path)
    if not path.exists():
        return [], []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    records, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
                raise ValueError("not a record")
            records.append(record)
        except ValueError:
            torn = number == len(lines)  # no newline after it: the write was cut short
            problems.append(f"{path}: cut the torn last line {number}" if torn else
                            f"{path}: skipped damaged line {number}")
    return records, problems


def read_records(path: str | Path) -> list[dict]:
    """The records of a metrics file, warning once per torn or damaged line (see `scan_records`)."""
    records, problems = scan_records(path)
    for problem in problems:
        rank_zero_warn(problem)
    return records


def read_results(run_dir: str | Path) -> dict:
    """`results.json` of a run directory ({} if the run has not finished a stage yet); RunFileError naming
    the file if it is not JSON (a copy cut short, an editor)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text(errors="replace"))
    except ValueError as e:
        raise RunFileError(f"{path}: unreadable ({e}); delete it and rerun the stage (fit --ckpt_path last, "
                           "validate, test) to write it again") from None
    if not isinstance(results, dict):
        raise RunFileError(f"{path}: expected a JSON object of stages, got {type(results).__name__}")
    return results


def _same_batch(after: list[dict], step: int):
    """Lightning writes a step checkpoint in `on_train_batch_end`, before it logs that batch's loss (and
    validates): those logging points (logged at `step - 1`) follow the checkpoint but are not redone by a
    run resumed from it, so they stay in the record; everything from `step` on is logged again. A callback
    after the checkpointing one (SpeedMonitor) may log at `step` before the loss of `step - 1` is logged,
    so the records are filtered by step, not cut at the first later one."""
    for record in after:
        if record.get("step") is not None and record["step"] < step:
            yield record


def with_pending(records: list[dict], pending: dict | None) -> list[dict]:
    """`records` and the checkpoint's pending logging point (`RunRecord.pending_point`) if they lack it: a
    process killed between a step checkpoint and Lightning's logging of that batch never wrote it, and the
    run resumed from the checkpoint does not train that batch again."""
    if not pending:
        return records
    for record in records:
        if record.get("step") == pending["step"] and pending["metrics"].keys() <= record["metrics"].keys():
            return records
    return [*records, pending]


class RunRecord(Logger, L.Callback):
    """A Logger beside the W&B one, and a Callback.

    As a Logger it sees every logging point — Lightning's own and the callbacks' direct
    `logger.log_metrics` calls, which a Callback alone would miss — and appends it to `metrics.jsonl`.
    As a Callback it fsyncs that file before each checkpoint is written and stores its length in the
    checkpoint, so that a run resumed from the checkpoint rewinds the file to the logging points that
    the resumed run will not redo (those after it are logged again, never twice). Loggers that can lose
    what they buffered (W&B) are handed the rewound record to re-send what they lack (`sync_history`).
    The CLI installs it, first among the callbacks; `finished` in results.json tells a complete stage
    from an interrupted one.
    """

    def __init__(self, save_dir: str | Path, resume_from: str | Path | None = None) -> None:
        """`resume_from`: the checkpoint `fit` resumes from. Lightning restores callback state only after
        `setup`, when other callbacks have logged already, so the CLI says which checkpoint it will be."""
        super().__init__()
        self._save_dir = Path(save_dir)
        self.resume_from = resume_from
        self.count = 0
        self.stage: str | None = None
        self.hyperparams: dict = {}
        self._file = None
        self._trainer: L.Trainer | None = None
        self._batch_end = False  # between a training batch's callbacks and its logging by Lightning
        self._eval_keys: set[str] = set()  # names validation and test logged (trainer.logged_metrics keeps them)

    # --- Logger -------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return "run_record"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @property
    def metrics_path(self) -> Path:
        return self._save_dir / METRICS_FILE

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(params, dict):
            self.hyperparams.update(params)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = scalars(metrics)
        if not values:
            return
        if self._file is None:  # logging outside a trainer stage (a direct call): append
            self._open(read_records(self.metrics_path))
        trainer = self._trainer
        if trainer is not None and (trainer.validating or trainer.testing or trainer.sanity_checking):
            self._eval_keys.update(values)
        line = json.dumps({"step": step, "stage": self.stage, "metrics": values}, allow_nan=True)
        self._file.write(line + "\n")
        self._file.flush()  # to the OS at once: a killed process loses nothing; fsync before checkpoints
        self.count += 1

    @rank_zero_only
    def save(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    # --- Callback -----------------------------------------------------------------------------------
    def _open(self, keep: list[dict]) -> None:
        """Rewrite the file as `keep` (durably) and append from there."""
        self._save_dir.mkdir(parents=True, exist_ok=True)
        if self._file is not None:
            self._file.close()
        records, problems = scan_records(self.metrics_path)
        if problems or len(keep) != len(records) or not self.metrics_path.exists():
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
        self._file = open(self.metrics_path, "a")
        self.count = len(keep)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stage = str(getattr(stage, "value", stage))  # a plain str: it goes into checkpoints (pending_point)
        self._trainer = trainer
        if not trainer.is_global_zero:
            return
        records = read_records(self.metrics_path)
        checkpoint = self.resume_from or trainer.ckpt_path
        if stage == "fit" and checkpoint:
            # Runs before any callback logs (first in the callback list) and before Lightning restores
            # the checkpoint: the record is rewound now, from the checkpoint's own count.
            state = read_checkpoint(checkpoint, mmap=True)
            count = state.get("callbacks", {}).get(self.state_key, {}).get("records")
            if count is None:
                rank_zero_warn(f"{checkpoint} has no {METRICS_FILE} position: the record keeps every line")
            else:
                records = records[:count] + list(_same_batch(records[count:], state["global_step"]))
                records = with_pending(records, state["callbacks"][self.state_key].get("pending"))
        self._open(records)
        self._write_result(stage, {"finished": False})  # replaced when the stage ends: a killed one stays so
        for logger in trainer.loggers:
            if logger is not self and hasattr(logger, "sync_history"):
                logger.sync_history(records)

    def state_dict(self) -> dict[str, Any]:
        """The record's length, and the logging point of the batch just trained if Lightning has yet to
        write it: a kill after the checkpoint and before that point loses nothing (`with_pending`)."""
        return {"records": self.count, "pending": self.pending_point()}

    def pending_point(self) -> dict | None:
        """The logging point Lightning writes after the callbacks of the training batch that just ended
        (where step checkpoints are saved), as `metrics.jsonl` will hold it; None outside that moment or if
        Lightning does not log this step (`log_every_n_steps`). Its numbers are those of the trainer's
        `logged_metrics` that no validation or test logged (that property keeps the last evaluation's
        values beside the current step's)."""
        trainer = self._trainer
        if not self._batch_end or trainer is None or trainer.log_every_n_steps <= 0:
            return None
        # Lightning's rule: log when the step count reaches a multiple of log_every_n_steps, or at a stop
        if trainer.global_step % trainer.log_every_n_steps and not trainer.should_stop:
            return None
        values = scalars({k: v for k, v in trainer.logged_metrics.items() if k not in self._eval_keys})
        if not values:
            return None
        return {"step": trainer.global_step - 1, "stage": self.stage,
                "metrics": {**values, "epoch": float(trainer.current_epoch)}}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._batch_end = True  # first among the callbacks; the checkpointing ones come after

    def _after_batch(self, *args, **kwargs) -> None:
        self._batch_end = False

    on_train_batch_start = on_validation_start = on_train_epoch_end = on_train_end = _after_batch

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # every logging point that precedes the checkpoint is on disk before the checkpoint is written
        self.save()

    def _finish(self, trainer: L.Trainer, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        self.save()
        checkpoint = next((c for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")), None)
        wandb_id = next((lg.wandb_run_id for lg in trainer.loggers if getattr(lg, "wandb_run_id", None)), None)
        metrics = {}  # the last value of every metric this stage logged (speed and cost included)
        for record in read_records(self.metrics_path):
            if record.get("stage") == stage:
                metrics.update(record["metrics"])
        metrics.update(scalars(dict(trainer.callback_metrics)))
        config = self.hyperparams.get("config", {})
        metadata = {k: v for k, v in self.hyperparams.items() if k not in ("config", "config_changes")}
        reached_max = stage != "fit" or trainer.max_steps <= 0 or trainer.global_step >= trainer.max_steps
        entry = {
            "finished": reached_max and not trainer.interrupted,  # a requeued SLURM job stops early
            "step": trainer.global_step,
            "metrics": metrics,
            "checkpoint": (checkpoint.last_model_path if checkpoint else None) if stage == "fit"
            else (str(trainer.ckpt_path) if trainer.ckpt_path else None),
            "best_checkpoint": next((c.best_model_path for c in trainer.checkpoint_callbacks
                                     if getattr(c, "monitor", None) == "val/mIoU" and c.best_model_path), None),
            "wandb_run_id": wandb_id,
            "git_commit": metadata.get("git_commit"),
            "config": config,
            "config_changes": self.hyperparams.get("config_changes", []),  # deliberate changes on resume
            "metadata": metadata,
        }
        self._write_result(stage, entry)

    def _write_result(self, stage: str, entry: dict) -> None:
        try:
            results = read_results(self._save_dir)
        except RunFileError as e:  # the other stages' entries are rewritten when those stages run again
            rank_zero_warn(f"{e.args[0].split(';')[0]}: rewritten with this {stage} only")
            results = {}
        results[stage] = entry
        atomic_write_text(self._save_dir / RESULTS_FILE,
                       json.dumps(results, indent=2, default=str, allow_nan=True) + "\n")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._finish(trainer, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "test")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()
        self._trainer = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # a failed stage (a full disk) closes the file too: an in-process caller goes on, and a disk holding
        # an open file cannot be unmounted
        self._close()

    def _close(self) -> None:
        if self._file is None:
            return
        try:
            self.save()
            self._file.close()
        except OSError:  # the disk is full: the lines flushed so far are the record
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_trainer": None}
