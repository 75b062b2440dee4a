"""How fast a config trains and evaluates, and what Lightning costs on top of a bare PyTorch loop.

    python -m experiments.benchmark --config experiments/configs/quickstart.yaml --steps 20
    python -m experiments.benchmark --config experiments/configs/resnet101_os16.yaml --data.root /datasets/voc

The config is read by the training CLI (base.yaml first, then `--config`, then any `--key value` override)
and its own datamodule and `SegmentationModule` are measured in:

* a bare PyTorch loop over the same DataLoader, same precision and memory format (run before and after
  Lightning; the ratio uses their mean, so drift on a shared machine does not pick a side);
* Lightning's `fit` with the config's callbacks and logger (W&B offline, into a temporary directory);
* the training DataLoader alone (batches copied to the device);
* single-scale and multi-scale + flip evaluation, bare (before and after) and through `Trainer.validate`.

Each phase runs `--warmup` steps first; the clock is read after a device synchronisation, and the
timed steps include waiting for the loader and any epoch boundaries in them. The last line,
`lightning/bare`, compares steady states (median step time, which noise on a shared machine moves least);
the line before it compares whole windows, epoch boundaries and logging points included, and the
epoch-boundary lines give their cost apart. MFU is the counted FLOPs per second over the device's dense
peak (Lightning's table for GPUs, `--peak-tflops` elsewhere).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI

from datamodules.voc import IGNORE_INDEX
from lightning_modules.components.complexity import protocol_cost
from lightning_modules.components.protocol import MS_SCALES
from lightning_modules.inference import labels_from, predict_probabilities
from lightning_modules.speed_monitor import (peak_flops, peak_memory_mb, reset_peak_memory, synchronize,
                                             train_step_flops)

from .train import BASE_CONFIG, CLI_KWARGS, TrainCLI


def build(config_args: list[str], run_dir: Path, overrides: dict[str, str]) -> LightningCLI:
    """The training CLI's objects for these arguments, without running anything."""
    args = [*config_args, f"--trainer.logger.init_args.save_dir={run_dir}",
            *(f"--{key}={value}" for key, value in overrides.items())]
    return TrainCLI(**CLI_KWARGS, parser_kwargs={"default_config_files": [str(BASE_CONFIG)]}, args=args, run=False)


def autocast(device: torch.device, precision: str):
    """What Lightning's precision plugin does around the forward pass."""
    precision = str(precision)
    if precision in ("32", "32-true"):
        return torch.autocast(device.type, enabled=False)
    if precision in ("bf16-mixed", "16-mixed"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    raise SystemExit(f"benchmark: trainer.precision={precision!r} is not supported here (32, bf16-mixed, 16-mixed)")


class Phase:
    """A timed window: synchronise, read the clock, reset the peak memory; the same at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.t0 = self.seconds = 0.0
        self.peak_mb = 0.0

    def start(self) -> None:
        synchronize(self.device)
        reset_peak_memory(self.device)
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.peak_mb = peak_memory_mb(self.device)


class StepClock:
    """Host time at the start and end of every step. Steady state: the median interval between the starts
    of two timed steps of one epoch (loader wait included; a slow step now and then — noise on a shared
    machine, a periodic checkpoint — does not move it). Epoch boundary: the median gap between the end
    of an epoch's last step and the start of the next epoch's first, beyond the median gap inside an epoch.
    On a GPU the host runs ahead by at most the launch queue, so in steady state its intervals are the
    device's."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.starts: list[tuple[int, float]] = []  # (epoch, time) of every step
        self.ends: list[float] = []

    def step_start(self, epoch: int) -> None:
        self.starts.append((epoch, time.perf_counter()))

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())

    def steady_ms(self) -> float:
        timed = self.starts[self.warmup:]
        return 1000 * statistics.median(b - a for (ea, a), (eb, b) in zip(timed, timed[1:]) if ea == eb)

    def boundary_ms(self) -> tuple[float | None, int]:
        """(extra ms of an epoch boundary, number of boundaries), or (None, 0) without one."""
        inside, across = [], []
        for (epoch, _), end, (next_epoch, start) in zip(self.starts, self.ends, self.starts[1:]):
            (inside if epoch == next_epoch else across).append(start - end)
        if not inside or not across:
            return None, 0
        return 1000 * (statistics.median(across) - statistics.median(inside)), len(across)


def bare_train(cli: LightningCLI, device: torch.device, warmup: int, steps: int) -> tuple[Phase, StepClock]:
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    module.trainer = trainer  # configure_optimizers reads max_steps from it
    data.prepare_data()
    data.setup("fit")
    module.setup("fit")
    module.to(device).train()
    module.on_train_start()
    optimizer = module.configure_optimizers()
    optimizer, scheduler = optimizer["optimizer"], optimizer["lr_scheduler"]["scheduler"]
    loader = data.train_dataloader()
    # fp16 needs loss scaling, as Lightning's 16-mixed plugin does (a no-op for other precisions)
    scaler = torch.amp.GradScaler(device.type, enabled=str(trainer.precision) == "16-mixed")
    phase, steps_clock = Phase(device), StepClock(warmup)
    step, epoch = 0, 0
    while step < warmup + steps:
        loader.sampler.set_epoch(epoch)
        for images, masks in loader:
            steps_clock.step_start(epoch)
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            images, masks = module.on_after_batch_transfer((images, masks), 0)
            with autocast(device, trainer.precision):
                logits = module.net(images)
            loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if step == warmup:
                phase.start()
            if step == warmup + steps:
                phase.stop()
                break
            steps_clock.step_end()
        epoch += 1
    return phase, steps_clock


class FitClock(L.Callback):
    """The bare loop's clock inside `fit`: after step `warmup` and after step `warmup + steps`."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.phase, self.clock = Phase(device), StepClock(warmup)
        self.warmup, self.steps = warmup, steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.step_start(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.phase.start()
        elif trainer.global_step == self.warmup + self.steps:
            self.phase.stop()
        self.clock.step_end()


def lightning_train(cli: LightningCLI, device: torch.device, warmup: int, steps: int) -> tuple[Phase, StepClock]:
    clock = FitClock(device, warmup, steps)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock.phase, clock.clock


def loader_alone(cli: LightningCLI, device: torch.device, warmup: int, steps: int) -> Phase:
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    loader, phase, step, epoch = data.train_dataloader(), Phase(device), 0, 0
    while step < warmup + steps:
        loader.sampler.set_epoch(epoch)
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            step += 1
            if step == warmup:
                phase.start()
            if step == warmup + steps:
                phase.stop()
                break
        epoch += 1
    return phase


def bare_eval(cli: LightningCLI, device: torch.device, images: int) -> tuple[Phase, int]:
    """Predictions and the confusion matrix, as the module's validation does, timed from the end of the
    first image (worker start-up excluded, as in `lightning_eval`) to the end of the last."""
    module, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("validate")
    module.trainer = cli.trainer  # setup reads the datamodule's labels through it
    module.setup("validate")
    module.to(device).eval()
    module.net.set_output_stride(module.eval_protocol.output_stride)
    module.metrics.reset()
    phase, seen = Phase(device), 0
    with torch.inference_mode(), autocast(device, cli.trainer.precision):
        for batch in data.val_dataloader():
            batch = [t.to(device, non_blocking=True) for t in batch]
            x, masks = module.on_after_batch_transfer(batch, 0)
            probs = predict_probabilities(module.net, x, module.eval_protocol)
            module.metrics.update(labels_from(probs), masks)
            if not seen:
                first = x.shape[0]
                phase.start()
            seen += x.shape[0]
            if seen >= images:
                break
        module.metrics.compute()
    phase.stop()
    return phase, seen - first


class EvalClock(L.Callback):
    def __init__(self, device: torch.device) -> None:
        self.phase, self.images = Phase(device), 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self.phase.start()
        else:
            self.images += batch[0].shape[0]

    def on_validation_end(self, trainer, pl_module) -> None:
        self.phase.stop()


def lightning_eval(cli: LightningCLI, device: torch.device) -> tuple[Phase, int]:
    clock = EvalClock(device)
    cli.trainer.callbacks.append(clock)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return clock.phase, clock.images


#: the report, printed at the end (Lightning's progress bar writes to stdout while the phases run)
REPORT: list[str] = []


def say(line: str) -> None:
    REPORT.append(line)


def row(name: str, images: int, phase: Phase, steps: int | None, flops_per_image: float | None,
        peak: float | None) -> float:
    rate = images / phase.seconds
    per = f"{1000 * phase.seconds / steps:8.1f} ms/step " if steps else f"{1000 * phase.seconds / images:8.1f} ms/image"
    mfu = f"{flops_per_image * rate / peak:6.1%}" if flops_per_image and peak else "   n/a"
    say(f"  {name:<24} {rate:8.2f} img/s {per}  peak {phase.peak_mb:8.0f} MB  MFU {mfu}")
    return rate


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for experiments.train")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per phase")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="validation images per evaluation phase (the first one untimed); default 100 on "
                             "GPUs, 6 on CPUs")
    parser.add_argument("--no-ms-flip", action="store_true",
                        help="skip the multi-scale + flip evaluation (11 network passes per image: minutes per "
                             "image for ResNet-101 on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense peak TFLOP/s of one device in the run's precision, for MFU on devices "
                             "missing from Lightning's table (CPUs, new GPUs)")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 2 or args.warmup < 1:
        parser.error(f"--steps must be at least 2 and --warmup at least 1 (got {args.steps}, {args.warmup}): the "
                     "steady state is the median interval between timed steps")
    config_args = [f"--config={c}" for c in args.config] + overrides
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    total = args.warmup + args.steps

    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        def cli(name: str, **extra: str) -> LightningCLI:
            import wandb

            wandb.finish()  # one W&B run per phase
            train = {"trainer.max_steps": str(total), "trainer.limit_val_batches": "0", "trainer.devices": "1"}
            return build(config_args, Path(tmp) / name, {**train, **extra})

        first = cli("bare-1")
        device = first.trainer.strategy.root_device
        precision = first.trainer.precision
        model, data = first.model, first.datamodule
        net = model.net
        batch, crop = data.hparams.batch_size, data.hparams.crop_size
        peak = peak_flops(device, precision, args.peak_tflops)
        eval_images = args.eval_images or (6 if device.type == "cpu" else 100)
        train_flops = train_step_flops(net, (batch, 3, crop, crop), model.train_output_stride) / batch
        say(f"device: {device_name(device)} | torch {torch.__version__} | lightning {L.__version__}")
        say(f"config: {' '.join(args.config)} {' '.join(overrides)}")
        say(f"  {net.config['backbone']} OS{model.train_output_stride} (eval OS{model.eval_protocol.output_stride}), "
            f"batch {batch} x {crop}x{crop}, precision {precision}, channels_last "
            f"{model.hparams.channels_last}, compile {model.hparams.get('compile', False)}, "
            f"{data.hparams.num_workers} loader workers; {train_flops / 1e9:.1f} GFLOP per training image"
            + ("" if peak else "; MFU needs --peak-tflops on this device"))
        say(f"train: {args.steps} steps after {args.warmup} warm-up steps, loader wait and epoch boundaries included")

        bare1, bare1_steps = bare_train(first, device, args.warmup, args.steps)
        images = batch * args.steps
        rates = [row("bare loop (before)", images, bare1, args.steps, train_flops, peak)]
        fit, fit_steps = lightning_train(cli("fit"), device, args.warmup, args.steps)
        lightning_rate = row("lightning fit", images, fit, args.steps, train_flops, peak)
        bare2, bare2_steps = bare_train(cli("bare-2"), device, args.warmup, args.steps)
        rates.append(row("bare loop (after)", images, bare2, args.steps, train_flops, peak))
        row("data loader alone", images, loader_alone(cli("loader"), device, args.warmup, args.steps), args.steps,
            None, None)
        steady = {"bare (before)": bare1_steps.steady_ms(), "lightning": fit_steps.steady_ms(),
                  "bare (after)": bare2_steps.steady_ms()}
        say("  steady state, median step " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in steady.items()))
        for name, clock in (("bare", bare1_steps), ("lightning", fit_steps)):
            extra, boundaries = clock.boundary_ms()
            say(f"  epoch boundary, {name:<9}  " + ("no boundary in the timed steps" if extra is None else
                                                    f"{extra:+8.1f} ms over a step inside an epoch "
                                                    f"({boundaries} boundaries)"))
        steady_ratio = statistics.mean((steady["bare (before)"], steady["bare (after)"])) / steady["lightning"]

        protocols = {"single scale": {}, "MS + flip": {"model.eval_scales": str(list(MS_SCALES)), "model.eval_flip": "true"}}
        if args.no_ms_flip:
            del protocols["MS + flip"]
        for label, protocol in protocols.items():
            settings = {"trainer.limit_val_batches": str(eval_images), **protocol}
            bare_cli = cli(f"eval-bare-{len(protocol)}", **settings)
            m = bare_cli.model
            p = m.eval_protocol
            say(f"eval {label}, OS{p.output_stride}, scales {list(p.scales)}, flip {p.flip}, canvas {p.canvas}:")
            eval_flops = 2e9 * protocol_cost(m.net.config, p)["speed/multiply_adds"]
            bare_eval(bare_cli, device, eval_images)  # untimed: kernels for each image size are chosen once
            phase, n = bare_eval(bare_cli, device, eval_images)
            bare_rates = [row("bare loop (before)", n, phase, None, eval_flops, peak)]
            phase, n = lightning_eval(cli(f"eval-lightning-{len(protocol)}", **settings), device)
            eval_rate = row("lightning validate", n, phase, None, eval_flops, peak)
            phase, n = bare_eval(cli(f"eval-bare-after-{len(protocol)}", **settings), device, eval_images)
            bare_rates.append(row("bare loop (after)", n, phase, None, eval_flops, peak))
            say(f"  lightning/bare (eval)    {eval_rate / statistics.mean(bare_rates):.3f}")
        say("  (eval MFU counts 513x513 images)")
        say(f"lightning/bare, whole window (epoch boundaries, logging points included) "
            f"{lightning_rate / statistics.mean(rates):.3f}")
        say(f"lightning/bare {steady_ratio:.3f}")
        import wandb

        wandb.finish()
    print("\n".join(REPORT), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
