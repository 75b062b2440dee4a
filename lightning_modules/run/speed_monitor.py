"""Speed figures a run can be judged by: synchronised, loader wait included, FLOPs utilisation, peak memory.

Training images/s is the wall time between two logging points (every `trainer.log_every_n_steps`), with
one device synchronisation at each logging point and none in between, so the host keeps running ahead of
the device as it does without the monitor. Evaluation runs inside `fit` are not training time: the
training clock pauses for them and they are timed on their own.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ..components.complexity import MULTIPLY_ADDS, MULTIPLY_ADDS_TF, PARAMETERS, protocol_cost, train_step_flops

#: `trainer.precision` → the dtype the device's matmuls run in (the peak FLOP/s that MFU divides by)
PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                    "16-true": torch.float16, "64-true": torch.float64}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is true (nothing to do on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        torch.accelerator.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: GPU allocator peak, or on Linux CPUs the process's peak resident memory (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: "5" resets VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the peak is the process's peak since it started


def peak_memory_mb(device: torch.device) -> float:
    """Peak tensor memory on a GPU; peak resident memory of this process (all of it, not just tensors) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


#: Dense peak TFLOP/s of GPUs that Lightning's table misses or lists with sparsity, by a substring of
#: `torch.cuda.get_device_name` (lower case). NVIDIA's H100/H200 datasheet: SXM bf16/fp16 1,979 TFLOP/s
#: *with sparsity*, i.e. 989.5 dense; tf32 494.7 dense; fp32 66.9. Lightning 2.6.6 files the H200 under
#: "h200 sxm1" with the sparse 2.0e15, and a plain "NVIDIA H200" (what the SXM part reports) matches nothing.
DENSE_PEAK_TFLOPS: dict[str, dict[torch.dtype, float]] = {
    "h200": {torch.bfloat16: 989.5, torch.float16: 989.5, torch.float32: 66.9, torch.float64: 33.5},
}


def peak_flops(device: torch.device, precision: str | int, peak_tflops: float | None = None) -> float | None:
    """Dense peak FLOP/s of one device: `peak_tflops` if given, else `DENSE_PEAK_TFLOPS`, else Lightning's
    table for the GPU and precision (None for CPUs and GPUs missing from both)."""
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    dtype = PRECISION_DTYPES.get(str(precision), torch.float32)
    name = torch.cuda.get_device_name(device).lower()
    for chip, table in DENSE_PEAK_TFLOPS.items():
        if chip in name and dtype in table:
            return table[dtype] * 1e12
    return get_available_flops(device, dtype)


class SpeedMonitor(L.Callback):
    """Logs `speed/*`:

    * once: `multiply_adds` (billions, evaluation protocol at 513×513) and `parameters` (millions);
    * every `log_every_n_steps`: `train_images_per_s` (all devices), `train_ms_per_step`, the step split
      into `data_wait_ms_per_step` (host time between two steps: loader wait, batch copy, Lightning's own
      bookkeeping) and `compute_ms_per_step` (the rest), `mfu` (counted training FLOPs per second over the
      device's peak) and `train_peak_memory_mb`;
    * after each evaluation: `eval_images_per_s`, `eval_ms_per_image`, `eval_mfu`, `eval_peak_memory_mb`.

    Args:
        peak_tflops: dense peak TFLOP/s of one device in the run's precision, for devices missing from
            Lightning's table (CPUs, new GPUs); without it MFU is logged only for known GPUs.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self.cost: dict[str, float] = {}
        self._throughput: Throughput | None = None
        self._flops_per_step: int | None = None
        self._flops_shape: tuple[int, ...] | None = None
        self._clock: float | None = None  # start of the running training segment (None: paused)
        self._train_seconds = 0.0  # training time before the running segment
        self._steps = self._images = 0  # per device, since on_train_start
        self._window = (0.0, 0, 0.0)  # (train seconds, steps, data wait) at the previous logging point
        self._data_wait = 0.0
        self._step_end = 0.0
        self._eval_t0, self._eval_images = 0.0, 0

    # -- logging -------------------------------------------------------------------------------------
    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.cost = protocol_cost(pl_module.net.config, pl_module.eval_protocol)  # speed/multiply_adds(_tf), parameters
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
                logger.experiment.summary.update(self.cost)
        self._log(trainer, self.cost)
        if stage == "fit":  # the one-line model summary (Lightning's is off: its FLOPs column reads 0)
            rank_zero_info(f"network: {self.cost[PARAMETERS]:.1f} M parameters, "
                           f"{self.cost[MULTIPLY_ADDS]:.1f} B Multiply-Adds per image "
                           f"({self.cost[MULTIPLY_ADDS_TF]:.1f} B counted the TF way) for the eval protocol")

    def _peak(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        return peak_flops(pl_module.device, trainer.precision, self.peak_tflops)

    # -- training --------------------------------------------------------------------------------------
    def _count_flops(self, pl_module: L.LightningModule, shape: tuple[int, ...]) -> None:
        self._flops_per_step = train_step_flops(pl_module.net.config, shape, pl_module.train_output_stride)
        self._flops_shape = shape

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = getattr(trainer, "datamodule", None)
        hp = getattr(data, "hparams", {})
        if "batch_size" in hp and "crop_size" in hp:  # counted before the clock starts
            self._count_flops(pl_module, (hp["batch_size"], 3, hp["crop_size"], hp["crop_size"]))
        self._throughput = Throughput(available_flops=self._peak(trainer, pl_module), world_size=trainer.world_size,
                                      window_size=2)
        self._throughput.update(time=0.0, batches=0, samples=0, flops=0)
        synchronize(pl_module.device)
        reset_peak_memory(pl_module.device)
        self._train_seconds, self._steps, self._images, self._data_wait = 0.0, 0, 0, 0.0
        self._window = (0.0, 0, 0.0)
        self._clock = self._step_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._data_wait += time.perf_counter() - self._step_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps += 1
        self._images += batch[0].shape[0]
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._log_train(trainer, pl_module, tuple(batch[0].shape))
        self._step_end = time.perf_counter()

    def _log_train(self, trainer: L.Trainer, pl_module: L.LightningModule, shape: tuple[int, ...]) -> None:
        synchronize(pl_module.device)  # the only synchronisation of the window
        now = time.perf_counter()
        seconds = self._train_seconds + now - self._clock
        last_seconds, last_steps, last_wait = self._window
        steps, window = self._steps - last_steps, seconds - last_seconds
        if steps == 0 or window <= 0:
            return
        if shape != self._flops_shape:  # a batch shape the datamodule did not announce (counted once)
            self._count_flops(pl_module, shape)
        self._throughput.update(time=seconds, batches=self._steps, samples=self._images,
                                flops=self._flops_per_step * steps)
        rates = self._throughput.compute()
        wait = self._data_wait - last_wait
        metrics = {
            "speed/train_images_per_s": rates["device/samples_per_sec"] * trainer.world_size,
            "speed/train_ms_per_step": 1000 * window / steps,
            "speed/data_wait_ms_per_step": 1000 * wait / steps,
            "speed/compute_ms_per_step": 1000 * (window - wait) / steps,
            "speed/train_peak_memory_mb": peak_memory_mb(pl_module.device),
        }
        if "device/mfu" in rates:
            metrics["speed/mfu"] = rates["device/mfu"]
        self._log(trainer, metrics)
        self._window = (seconds, self._steps, self._data_wait)

    # -- evaluation: its own clock; inside fit, the training clock pauses -------------------------------
    def _eval_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        synchronize(pl_module.device)
        now = time.perf_counter()
        if self._clock is not None and trainer.state.fn == "fit":
            self._train_seconds += now - self._clock
            self._clock = None
        reset_peak_memory(pl_module.device)
        self._eval_t0, self._eval_images = now, 0

    def _eval_batch(self, trainer: L.Trainer, batch) -> None:
        if not trainer.sanity_checking:
            self._eval_images += batch[0].shape[0]

    def _eval_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        synchronize(pl_module.device)
        now = time.perf_counter()
        seconds = now - self._eval_t0
        if self._eval_images:
            images_per_s = self._eval_images * trainer.world_size / seconds
            metrics = {"speed/eval_images_per_s": images_per_s,
                       "speed/eval_ms_per_image": 1000 * seconds / self._eval_images,
                       "speed/eval_peak_memory_mb": peak_memory_mb(pl_module.device)}
            peak = self._peak(trainer, pl_module)
            if peak and self.cost:
                # counted at 513×513 (the paper's eval canvas): 2 FLOPs per multiply-add
                metrics["speed/eval_mfu"] = 2e9 * self.cost["speed/multiply_adds"] * images_per_s / trainer.world_size / peak
            self._log(trainer, metrics)
        if trainer.state.fn == "fit" and self._throughput is not None:
            reset_peak_memory(pl_module.device)
            self._clock = self._step_end = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, batch)

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module)
