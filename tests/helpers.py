"""Callbacks and runners the training tests plug into the real CLI."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

ROOT = Path(__file__).resolve().parent.parent


class KillAtStep(L.Callback):
    """SIGKILL the process when step `step` starts: an interruption with no clean shutdown."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(L.Callback):
    """Send this process `signum` when step `step` starts, and again while the checkpoint it causes is being
    written (a second signal during the save must not tear the file)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.signum, self.sent = step, signum, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.sent:
            os.kill(os.getpid(), self.signum)
            self.sent = 1

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.sent == 1:
            os.kill(os.getpid(), self.signum)
            self.sent = 2


class KillAfterCheckpoint(Checkpoint):
    """SIGKILL the process right after the step checkpoint of step `step` is written, before Lightning logs
    the batch that led to it. A `Checkpoint` so that Lightning runs it after the checkpoint callbacks
    listed before it (it moves checkpoint callbacks last, in their order)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalInValidation(SignalAtStep):
    """Send this process `signum` when the first batch of the validation after step `step` starts, and again
    while the checkpoint it causes is being written."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pass  # not when a step starts: in the validation

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking and not self.sent:
            os.kill(os.getpid(), self.signum)
            self.sent = 1


def run_cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    result = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"experiments.train {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def finish_wandb(timeout: float = 120) -> None:
    """Finish this process's open W&B run, and wait until its offline file holds the run's end: on a busy
    machine `wandb.finish` can return before wandb-core has written the last records."""
    import wandb

    from lightning_modules.run.wandb_offline import read_run

    run = wandb.run
    if run is None:
        return
    path = None if run.disabled or not run.offline else Path(run.settings.sync_file)
    wandb.finish()
    deadline = time.time() + timeout
    while path is not None and not (path.exists() and read_run(path).finished):
        if time.time() > deadline:
            raise AssertionError(f"{path}: wandb did not write the run's end within {timeout} s of wandb.finish")
        time.sleep(0.05)


def run_in_process(*args: str):
    """`python -m experiments.train *args` in this process (no interpreter start, no imports, no W&B service
    start of its own: seconds per run): for tests where the process boundary is not what they check. Returns
    the LightningCLI; a user error raises SystemExit as the command exits. Output: `capfd` (what it prints),
    `caplog` (Lightning's log lines, `rank_zero_info`)."""
    from experiments import train

    with contextlib.chdir(ROOT):  # config paths are relative to the repository, as for run_cli
        try:
            return train.main(list(args))
        finally:  # Lightning's WandbLogger would reuse a run left open by this one
            finish_wandb()


def console_of_run(request, *args: str) -> str:
    """What `python -m experiments.train *args` shows on its console (stdout, stderr and Lightning's log lines),
    from a run in this process: for fixtures wider than a test, which cannot use `capfd`/`caplog`. With pytest's
    capturing off (`-s`) there is nothing to read back, and the run gets a process of its own."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None or not capture.is_globally_capturing():
        result = run_cli(*args)
        return result.stdout + result.stderr
    capture.read_global_capture()  # what came before is not this run's
    handler = LogLines()
    logging.getLogger().addHandler(handler)  # under pytest, Lightning's loggers propagate to the root logger
    try:
        run_in_process(*args)
    finally:
        logging.getLogger().removeHandler(handler)
        out, err = capture.read_global_capture()
    return "\n".join([out, err, *handler.lines])


class LogLines(logging.Handler):
    """Keeps the messages of the log records it gets (INFO and up)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def tiny_args(voc_root: Path, run_dir: Path, max_steps: int = 4, **extra: str) -> list[str]:
    """The quickstart shrunk by the small-run overlay (`smoke.yaml`: 65×65 crops, batch 4, …) to `max_steps`."""
    overrides = {
        "data.root": str(voc_root), "trainer.max_steps": str(max_steps), "trainer.val_check_interval": str(max_steps),
        "trainer.limit_val_batches": "4", "trainer.logger.init_args.save_dir": str(run_dir), **extra,
    }
    return ["--config", "experiments/configs/quickstart.yaml", "--config", "experiments/configs/smoke.yaml",
            *(f"--{k}={v}" for k, v in overrides.items())]


def fit_args(layout: str, root, run_dir, *extra: str) -> list[str]:
    """`fit` of 2 tiny steps on a dataset layout other than VOC (its class_path given as `layout`)."""
    args = tiny_args(root, run_dir, max_steps=2, **{"data.train_split": "train", "trainer.limit_val_batches": "1"})
    # the layout's class_path goes right after the config files, before its init_args
    after_configs = max(i for i, arg in enumerate(args) if arg == "--config") + 2
    return ["fit", *args[:after_configs], f"--data={layout}", *args[after_configs:], *extra]


def shrink_voc_images(root: Path, factor: int) -> Path:
    """Shrink the VOC images and masks of a generated tree in place by `factor` (SBD's stay): whole-image
    evaluation on their own canvas (`model.eval_canvas: null`) then costs 1/factor² as much."""
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2012"
    for path in [*voc.glob("JPEGImages/*.jpg"), *voc.glob("SegmentationClass/*.png")]:
        with Image.open(path) as image:
            small = image.resize((image.width // factor, image.height // factor),
                                 Image.NEAREST if image.mode == "P" else Image.BILINEAR)
        small.save(path)
    return root


class RecordBatchNormTypes(L.Callback):
    """Write the BatchNorm classes the trained model really uses (SyncBatchNorm under DDP) to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            names = sorted({type(m).__name__ for m in pl_module.modules() if "BatchNorm" in type(m).__name__})
            Path(self.path).write_text("\n".join(names))


class StepTimes(L.Callback):
    """Write the wall-clock time of train start and of each step's end (after every other callback of the
    step) to a JSON file: the run's own clock, to check the logged speed against."""

    def __init__(self, path: str) -> None:
        self.path, self.start, self.ends, self.images = path, 0.0, {}, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends[trainer.global_step] = time.perf_counter()
        self.images = batch[0].shape[0]

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.path).write_text(json.dumps({"start": self.start, "ends": self.ends, "batch_size": self.images}))


class SharedNote:
    """A harmless object of a class torch's safe checkpoint loader does not know, as a colleague's checkpoint
    may carry one: what the DEEPLAB_TRUST_CHECKPOINTS opt-in is tested with (importable by the loading process)."""

    def __init__(self, text: str) -> None:
        self.text = text
