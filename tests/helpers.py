"""Callbacks and runners the training tests plug into the real CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parent.parent


class KillAtStep(L.Callback):
    """SIGKILL the process when step `step` starts: an interruption with no clean shutdown."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run_cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    result = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"experiments.train {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def tiny_args(voc_root: Path, run_dir: Path, max_steps: int = 4, **extra: str) -> list[str]:
    """The quickstart shrunk by the small-run overlay (`smoke.yaml`: 65×65 crops, batch 4, …) to `max_steps`."""
    overrides = {
        "data.root": str(voc_root), "trainer.max_steps": str(max_steps), "trainer.val_check_interval": str(max_steps),
        "trainer.limit_val_batches": "4", "trainer.logger.init_args.save_dir": str(run_dir), **extra,
    }
    return ["--config", "experiments/configs/quickstart.yaml", "--config", "experiments/configs/smoke.yaml",
            *(f"--{k}={v}" for k, v in overrides.items())]


class RecordBatchNormTypes(L.Callback):
    """Write the BatchNorm classes the trained model really uses (SyncBatchNorm under DDP) to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            names = sorted({type(m).__name__ for m in pl_module.modules() if "BatchNorm" in type(m).__name__})
            Path(self.path).write_text("\n".join(names))
