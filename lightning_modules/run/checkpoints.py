"""Checkpoints that survive a kill: durable atomic writes, which checkpoint a resumed run starts from, and the
callback that keeps `last.ckpt` at the final step."""
from __future__ import annotations

import errno
import importlib
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding an object that only unpickling could rebuild (which can run any code)."""


#: the opt-in for checkpoints that hold more than tensors and plain data (docs/checkpoint-safety.md): an
#: environment variable, so that every reader honours it alike (the training CLI, Lightning's own restore, DDP
#: and SLURM-requeued processes, experiments.predict/export, `load_model` from a notebook)
TRUST_ENV = "DEEPLAB_TRUST_CHECKPOINTS"


def trusting() -> bool:
    """Whether the user opted in (`DEEPLAB_TRUST_CHECKPOINTS=1`) to unpickling whatever a checkpoint holds."""
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


def _unsafe_globals(path: Path, error: pickle.UnpicklingError) -> str | None:
    """What the safe loader refused: every type or function the pickle names beyond tensors and plain data,
    found by scanning its opcodes (nothing is executed), or else the one in torch's message (`GLOBAL
    module.name`); None for a file that is merely corrupt."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: nothing to scan
        found = []
    if not found:
        named = re.search(r"GLOBAL ([\w.]+)", str(error))
        found = [named.group(1)] if named else []
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return ", ".join(found[:3]) + more if found else None


def _allow_globals_of(path: Path) -> None:
    """After a trusted file was unpickled, its types are allowed to torch's safe loader for the rest of the
    process: Lightning reads the same file again with `weights_only=True` (LightningCLI's hyperparameters)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # torch's legacy (non-zip) format: its types cannot be listed without unpickling
        return
    allowed = []
    for name in names:
        parts = name.split(".")
        for split in range(len(parts) - 1, 0, -1):  # `module.Class.attr`: the longest importable module
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attr in parts[split:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            allowed.append(obj)
            break
    torch.serialization.add_safe_globals(allowed)


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """A checkpoint as torch's safe loader reads it: tensors and plain data (dicts, lists, numbers, strings).
    Every read of a checkpoint goes through here, Lightning's restore included (`AtomicCheckpointIO`).

    A checkpoint is a pickle, and unpickling can run any code; the checkpoints this repository writes
    (training, the official importer, plain state dicts) hold nothing else, so no type is allowlisted. A
    file that needs anything more is refused (UnsafeCheckpointError, one line naming the file and the type)
    before any of it is executed, unless the user set DEEPLAB_TRUST_CHECKPOINTS=1 for a file they trust.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path, e)
        if unsafe is None:
            raise
        if not trusting():
            raise UnsafeCheckpointError(
                f"{path}: not loaded: it holds {unsafe}, and only full unpickling, which can run any code, "
                f"loads that (a checkpoint should hold tensors and plain data only); if you trust this file, "
                f"set {TRUST_ENV}=1 (docs/checkpoint-safety.md)") from None
    checkpoint = torch.load(path, map_location=map_location, mmap=mmap, weights_only=False)
    _allow_globals_of(path)
    return checkpoint


class DiskFullError(OSError):
    """A run file or checkpoint that did not fit on its disk: one line naming it and the space left."""


def _no_space(error: BaseException | None) -> bool:
    """torch.save reports a full disk as a RuntimeError whose cause (or context) is the OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def raise_if_disk_full(error: BaseException, path: Path) -> None:
    """DiskFullError naming `path` and the free space if `error` is a full disk; otherwise nothing."""
    if _no_space(error):
        free = shutil.disk_usage(path.parent).free / 2**20
        raise DiskFullError(f"{path}: no space left on device ({free:.1f} MiB free); nothing was "
                            "half-written and the earlier files are kept: free space, then resume with "
                            "--ckpt_path last") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temp_files(path: Path) -> None:
    """A writer killed mid-write (SIGKILL, node failure) cannot remove its temporary file: the next write
    of the same checkpoint does, if the process that made it is gone."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                stale.unlink(missing_ok=True)
            except PermissionError:  # alive, another user's
                pass


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call `write(file)` so that `path` holds either the old file or the complete new one, whatever moment
    the writer is killed.

    The temporary file `.<name>.<pid>.tmp` is created beside `path` (never in `$TMPDIR`, which may be another
    filesystem where the final move is a copy), fsynced, renamed over `path`, and the directory is fsynced
    so the rename itself survives a power loss. A failed write removes its temporary file; one left by a
    killed writer is removed by the next write of the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(e, path)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `atomic_write`: a checkpoint is never torn."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | Path, text: str) -> None:
    """A run file (`results.json`, `metrics.jsonl` rewound, the W&B run id) the way a checkpoint is
    written (`atomic_write`): the old file or the complete new one, never a torn one."""
    atomic_write(path, lambda f: f.write(text), mode="w")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with `atomic_torch_save`: every checkpoint Lightning writes (ModelCheckpoint,
    `trainer.save_checkpoint`, the SLURM requeue's) is durable and never torn. Installed by the CLI."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's restore (`trainer.fit/validate/test(ckpt_path=...)`, the SLURM requeue's) reads with
        `read_checkpoint`: the safe loader, whatever `weights_only` the caller asks for (the opt-in for a
        trusted file is DEEPLAB_TRUST_CHECKPOINTS=1)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return read_checkpoint(path, map_location=map_location)


def read_step(path: str | Path) -> int:
    """The `global_step` recorded in a checkpoint; CheckpointError naming the file if it cannot be read.

    A torch checkpoint is a zip archive: the CRC check catches a truncated or corrupt file before
    unpickling (memory-mapped, so the tensors are not read into memory).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                raise zipfile.BadZipFile("CRC mismatch")
        checkpoint = read_checkpoint(path, mmap=True)
        return int(checkpoint["global_step"])
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # zip, pickle and key errors all mean the same thing here
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); "
                              "expected a complete Lightning checkpoint") from None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Every checkpoint of a run: ModelCheckpoint's files and Lightning's SLURM `hpc_ckpt_*.ckpt`."""
    return sorted(p for p in Path(run_dir).rglob("*.ckpt") if p.is_file() and not p.is_symlink())


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> str | None:
    """`last`: the readable checkpoint of `run_dir` with the highest recorded step (file times lie after a
    copy or an `rsync`), skipping unreadable ones and saying so, or None to start from scratch if the run
    has none. A run directory stands for its `last` (an error if it has none: the ablation runner scores a
    training this way). An explicit path must be a readable checkpoint (CheckpointError otherwise).
    Lightning's own keywords (`best`, `hpc`, `registry…`) pass through unchanged."""
    if ckpt_path is None or ckpt_path in ("best", "hpc") or ckpt_path.startswith("registry"):
        return ckpt_path
    if ckpt_path != "last" and not Path(ckpt_path).is_dir():
        read_step(ckpt_path)
        return ckpt_path
    if ckpt_path != "last":
        newest = resolve_ckpt_path("last", ckpt_path)
        if newest is None:
            raise CheckpointError(f"{ckpt_path}: expected a checkpoint file, or a run directory holding one")
        return newest
    readable = []
    for candidate in checkpoints(run_dir):
        try:
            readable.append((read_step(candidate), candidate.stat().st_mtime, candidate))
        except UnsafeCheckpointError:
            raise  # refused, never skipped for an older one: the user decides about this file
        except CheckpointError as e:
            rank_zero_warn(f"{e}: skipping it")
    if not readable:
        rank_zero_info(f"No checkpoint in {run_dir}: starting from scratch")
        return None
    step, _, newest = max(readable)
    rank_zero_info(f"Resuming from {newest} (step {step})")
    return str(newest)


def moved_state(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """ModelCheckpoint's state with every path under its recorded directory `old` moved under `new` (the
    same file names); other paths, empty ones and scores unchanged."""
    def move(path: Any) -> Any:
        if not path:
            return path
        try:
            return str(Path(new) / Path(path).relative_to(old))
        except ValueError:  # not under the checkpoint directory
            return path

    moved = {**state, "dirpath": new}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in moved:
            moved[key] = move(moved[key])
    if isinstance(moved.get("best_k_models"), dict):
        moved["best_k_models"] = {move(path): score for path, score in moved["best_k_models"].items()}
    return moved


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best-checkpoint tracking and retention follow the run folder.

    ModelCheckpoint stores absolute (or as-given) paths — best, top-k, last — and restores them only when
    its directory is the one recorded in the checkpoint. A run folder that was moved, or is reached through
    another path (a symlink, another mount point), would restart best tracking and never delete the old
    top-k files, which pile up. Here the recorded paths are mapped to the same names under the current
    directory, so `save_top_k` and the best score carry on (`--ckpt_path last` after a move)."""

    #: whether the checkpoint being restored resumes this run's fit (Lightning restores callbacks for
    #: `validate --ckpt_path` too, where the checkpoint is another run's and nothing moved)
    _resuming_fit = True

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._resuming_fit = trainer.state.fn == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("dirpath")
        if recorded and self.dirpath and str(recorded) != str(self.dirpath):
            if self._resuming_fit:
                rank_zero_info(f"Run folder moved: checkpoints recorded in {recorded} are tracked in {self.dirpath}")
            state_dict = moved_state(state_dict, str(recorded), str(self.dirpath))
        super().load_state_dict(state_dict)

    @property
    def state_key(self) -> str:
        # base.yaml's best checkpoint was Lightning's ModelCheckpoint, whose key is its class name: the same
        # key lets a run started then resume its best tracking
        key = super().state_key
        if type(self) is RunCheckpoint:
            key = key.replace(RunCheckpoint.__qualname__, ModelCheckpoint.__qualname__, 1)
        return key


class StepCheckpoint(RunCheckpoint):
    """ModelCheckpoint whose `last.ckpt` always holds the final step.

    Lightning writes `last.ckpt` at the end of training only if it never wrote one before, so with
    `every_n_train_steps` not dividing `max_steps` the file would keep an earlier step — and evaluations
    or resumed ablation rows would silently use stale weights. A run stopped before `max_steps` (SLURM
    requeue, SIGTERM) writes no end-of-training checkpoint: the loop state of a stopped run would not resume
    exactly, and the requeue callback has already saved one at the step boundary. Whether `last.ckpt`
    already holds the final step is read from the file (`read_step`), not from ModelCheckpoint's private
    bookkeeping, which changes between Lightning releases. With `enable_version_counter: false` (base.yaml)
    a resumed run overwrites `last.ckpt` instead of writing `last-v1.ckpt` beside it.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if 0 < trainer.max_steps and trainer.global_step < trainer.max_steps:
            return  # stopped early (requeue): not even Lightning's own end-of-training `last.ckpt`
        super().on_train_end(trainer, pl_module)
        if not self.save_last:
            return
        path = self.last_model_path or self.format_checkpoint_name({}, filename=self.CHECKPOINT_NAME_LAST)
        stale = False
        if trainer.is_global_zero:  # one reader decides, every process takes part in the save
            try:
                stale = read_step(path) != trainer.global_step
            except CheckpointError:  # none yet
                stale = True
        if trainer.strategy.broadcast(stale):
            self.last_model_path = path  # before the save: it is part of the state a resumed run restores
            trainer.save_checkpoint(path, self.save_weights_only)
