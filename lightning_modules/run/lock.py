"""One run per run directory: a lock file naming the process that writes into it."""
from __future__ import annotations

import argparse
import atexit
import json
import os
import socket
import time
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


#: a lock younger than this with no readable owner is being written by its creator, not torn by a crash
WRITING_S = 10.0


def _holder(lock: Path) -> dict | None:
    """The lock's owner, or None if the lock is stale: its process is gone from this host, it belongs to
    this run (a requeued job, another rank of it, this process), or it is unreadable (torn by a crash) and
    older than a creator needs to write it."""
    try:
        owner = json.loads(lock.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        try:
            young = time.time() - lock.stat().st_mtime < WRITING_S
        except OSError:
            return None
        return {"pid": "?", "host": "?", "writing": True} if young else None
    if owner.get("run") is not None and owner.get("run") == run_identity():
        return None
    if host == socket.gethostname() and (pid == os.getpid() or not _alive(pid)):
        return None
    return owner


def _in_use(run_dir: str | Path, lock: Path, owner: dict) -> RunInUseError:
    if owner.get("writing"):
        return RunInUseError(f"{run_dir}: another process is taking it at this moment (lock {lock}); expected a "
                             "run directory no other process writes into: give this run another "
                             "--trainer.logger.init_args.save_dir")
    message = (f"{run_dir}: in use by pid {owner['pid']} on {owner['host']} (lock {lock}); expected a run "
               "directory no other process writes into: stop that run, or give this one another "
               "--trainer.logger.init_args.save_dir")
    if owner["host"] not in ("?", socket.gethostname()):  # its process cannot be checked from here
        message += (f"; if {owner['host']} is gone (a crashed node), clear the lock with "
                    f"`python -m lightning_modules.run.lock --clear {run_dir}`")
    return RunInUseError(message)


def _create(lock: Path) -> bool:
    """Create the lock file exclusively (O_CREAT | O_EXCL: of two processes, exactly one succeeds, on NFS too)
    with this process as its owner; False if it exists."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run": run_identity()}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _remove_stale(lock: Path, stale: os.stat_result) -> None:
    """Remove the stale lock `stale` (its stat), and only it: it is moved aside first, and a lock created in
    its place meanwhile by another starter (another inode) is put back."""
    aside = lock.with_name(f".{LOCK_FILE}.{os.getpid()}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # another starter removed it
    if os.stat(aside).st_ino != stale.st_ino:
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def acquire(run_dir: str | Path) -> Path | None:
    """Take the run directory for this process (rank 0 only; the other ranks are the same run), or raise
    RunInUseError naming the process holding it. The lock goes when this process exits; one left by a
    killed process is stale and taken over. Returns the lock file, None where no lock is taken."""
    if rank_zero_only.rank != 0:
        return None
    lock = Path(run_dir) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # each pass either creates the lock, or removes a stale one another process left
        if _create(lock):
            atexit.register(release, lock)
            return lock
        try:
            seen = os.stat(lock)
        except FileNotFoundError:
            continue
        owner = _holder(lock)
        if owner is not None:
            raise _in_use(run_dir, lock, owner)
        _remove_stale(lock, seen)
    raise RunInUseError(f"{run_dir}: lock {lock} keeps changing hands; expected a run directory no other "
                        "process writes into: give this run another --trainer.logger.init_args.save_dir")


def clear(run_dir: str | Path) -> str:
    """Remove the lock of `run_dir` whatever its owner (a lock left by a node that crashed cannot be checked
    from another host); what was removed, as one line."""
    lock = Path(run_dir) / LOCK_FILE
    if not lock.exists():
        return f"{run_dir}: no lock"
    try:
        owner = json.loads(lock.read_text())
        what = f"pid {owner.get('pid')} on {owner.get('host')}"
    except (OSError, ValueError, AttributeError):
        what = "an unreadable owner"
    lock.unlink(missing_ok=True)
    return f"{run_dir}: removed the lock of {what}"


def release(lock: Path) -> None:
    """Remove the lock if this process still holds it."""
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.run.lock",
        description="Clear a run directory's lock once you know the process that held it is gone, e.g. a node "
                    "that crashed (a lock of this host is cleared by itself when its process is gone).")
    parser.add_argument("--clear", metavar="RUN_DIR", required=True, help="the run directory whose lock to remove")
    print(clear(parser.parse_args(args).clear))


if __name__ == "__main__":
    main()
