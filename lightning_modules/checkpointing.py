"""Which checkpoint a resumed run starts from: the newest one that can be read."""
from __future__ import annotations

import zipfile
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def _readable(path: Path) -> bool:
    """A torch checkpoint is a zip archive: a truncated or corrupt file fails the central-directory check."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def checkpoints_newest_first(run_dir: str | Path) -> list[Path]:
    """Every checkpoint of a run: ModelCheckpoint's files and Lightning's SLURM `hpc_ckpt_*.ckpt`."""
    run_dir = Path(run_dir)
    found = {p for p in run_dir.rglob("*.ckpt") if p.is_file() and not p.is_symlink()}
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_ckpt_path(ckpt_path: str, run_dir: str | Path) -> str | None:
    """`last`: the newest readable checkpoint in `run_dir`, falling back past unreadable ones (and saying
    so), or None to start from scratch if the run has none. Any other value is returned unchanged."""
    if ckpt_path != "last":
        return ckpt_path
    for candidate in checkpoints_newest_first(run_dir):
        if _readable(candidate):
            rank_zero_info(f"Resuming from {candidate}")
            return str(candidate)
        rank_zero_warn(f"Checkpoint {candidate} is unreadable (truncated or corrupt); trying the previous one")
    rank_zero_info(f"No checkpoint in {run_dir}: starting from scratch")
    return None
