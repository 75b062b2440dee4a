"""A run folder moved, or reached through a symlink, resumes with its best-checkpoint tracking and retention."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments import train
from helpers import tiny_args
from lightning_modules.run.record import read_records, read_results


def _fit(voc_root, run_dir: Path, stop_at: int | None, resume: bool) -> None:
    """8 steps validated every 2 (one batch), periodic checkpoints every 2 (base.yaml keeps the 2 newest)
    and the best by val/mIoU; SIGTERM when step `stop_at` starts stops the run after it (exit 143)."""
    args = ["fit", *tiny_args(voc_root, run_dir, 8), "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1", "--checkpoint_every_n_train_steps=2",
            "--trainer.precision=32-true"]  # bf16 is slow on CPUs without bf16 instructions
    if stop_at is not None:
        signal_at = json.dumps({"class_path": "helpers.SignalAtStep", "init_args": {"step": stop_at}})
        args.append(f"--trainer.callbacks+={signal_at}")
    if resume:
        args.append("--ckpt_path=last")
    if stop_at is None:
        train.main(args)
        return
    with pytest.raises(SystemExit) as stopped:
        train.main(args)
    assert stopped.value.code == 143


def _names(run_dir: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in run_dir.rglob(f"{prefix}-*.ckpt"))


def test_a_moved_and_a_symlinked_run_folder_keep_best_tracking_and_retention(voc_root, tmp_path, caplog):
    """Stopped at step 4, moved; stopped at step 6, moved again and resumed through a symlink to step 8:
    the periodic checkpoints are the two newest only, one best checkpoint remains, it is the first step
    of the highest val/mIoU over the whole run, and `best_checkpoint` names it at the current location."""
    first, moved, final = tmp_path / "first", tmp_path / "moved", tmp_path / "final"
    _fit(voc_root, first, stop_at=3, resume=False)
    assert _names(first, "step") == ["step-2.ckpt", "step-4.ckpt"] and len(_names(first, "best")) == 1

    shutil.move(first, moved)
    _fit(voc_root, moved, stop_at=5, resume=True)
    assert f"Run folder moved: checkpoints recorded in {first}" in caplog.text
    assert _names(moved, "step") == ["step-4.ckpt", "step-6.ckpt"]  # step-2 is gone: retention followed
    assert len(_names(moved, "best")) == 1

    shutil.move(moved, final)
    link = tmp_path / "link"
    link.symlink_to(final, target_is_directory=True)
    _fit(voc_root, link, stop_at=None, resume=True)
    assert _names(final, "step") == ["step-6.ckpt", "step-8.ckpt"]
    (best,) = _names(final, "best")

    scores = [(r["step"], r["metrics"]["val/mIoU"]) for r in read_records(final / "metrics.jsonl")
              if "val/mIoU" in r["metrics"]]
    assert len({step for step, _ in scores}) == len(scores)  # each validation at most once
    top = max(score for _, score in scores)
    first_top = next(step for step, score in scores if score == top)
    assert best == f"best-{first_top + 1}.ckpt"  # logged at the step before the checkpoint's global step
    recorded = Path(read_results(final)["fit"]["best_checkpoint"])
    assert recorded.name == best and recorded.is_relative_to(link) and recorded.is_file()
