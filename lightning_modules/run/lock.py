"""One run per run directory: a lock file naming the process that writes into it."""
from __future__ import annotations

import atexit
import json
import os
import socket
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

LOCK_FILE = "run.lock"


class RunInUseError(RuntimeError):
    """Another live process writes into this run directory; the message names it."""


def run_identity() -> str | None:
    """What the processes of one run share: the SLURM job (its requeues too) or the torch.distributed
    rendezvous; None for a single process started by hand."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{os.environ['TORCHELASTIC_RUN_ID']}"
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return f"ddp:{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(lock: Path) -> dict | None:
    """The lock's owner, or None if the lock is stale: its process is gone from this host, it belongs to
    this run (a requeued job, another rank of it, this process), or it is unreadable (torn by a crash)."""
    try:
        owner = json.loads(lock.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("run") is not None and owner.get("run") == run_identity():
        return None
    if host == socket.gethostname() and (pid == os.getpid() or not _alive(pid)):
        return None
    return owner


def acquire(run_dir: str | Path) -> Path | None:
    """Take the run directory for this process (rank 0 only; the other ranks are the same run), or raise
    RunInUseError naming the process holding it. The lock goes when this process exits; one left by a
    killed process is stale and taken over. Returns the lock file, None where no lock is taken."""
    if rank_zero_only.rank != 0:
        return None
    lock = Path(run_dir) / LOCK_FILE
    owner = _holder(lock) if lock.exists() else None
    if owner is not None:
        raise RunInUseError(f"{run_dir}: in use by pid {owner['pid']} on {owner['host']} (lock {lock}); "
                            "expected a run directory no other process writes into: stop that run, or give this "
                            "one another --trainer.logger.init_args.save_dir")
    lock.parent.mkdir(parents=True, exist_ok=True)
    tmp = lock.with_name(f".{LOCK_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run": run_identity()}) + "\n")
    os.replace(tmp, lock)  # two starts at the same moment: the later rename wins, checked below
    if _holder(lock) is not None:
        owner = json.loads(lock.read_text())
        raise RunInUseError(f"{run_dir}: in use by pid {owner['pid']} on {owner['host']} (lock {lock}), started "
                            "at the same moment as this one; give this run another --trainer.logger.init_args.save_dir")
    atexit.register(release, lock)
    return lock


def release(lock: Path) -> None:
    """Remove the lock if this process still holds it."""
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass
