"""How fast a config trains and evaluates, and what Lightning costs on top of a bare PyTorch loop.

    python -m experiments.measure.benchmark --config experiments/configs/quickstart.yaml --steps 20
    python -m experiments.measure.benchmark --config experiments/configs/resnet101_os16.yaml --data.root /datasets/voc

The config is read by the training CLI (base.yaml first, then `--config`, then any `--key value` override)
and its own datamodule and `SegmentationModule` are measured in:

* a bare PyTorch loop over the same DataLoader, same precision and memory format (run before and after
  Lightning; the ratio uses their mean, so drift on a shared machine does not pick a side);
* Lightning's `fit` with the config's callbacks and logger (W&B offline, into a temporary directory);
* the training DataLoader alone (batches copied to the device);
* single-scale and multi-scale + flip evaluation, bare (before and after) and through `Trainer.validate`.

Each phase runs `--warmup` steps first; the clock is read after a device synchronisation, and the
timed steps include waiting for the loader and any epoch boundaries in them. The `lightning/bare` line
compares steady states (median step time, which noise on a shared machine moves least); the line before it
compares whole windows, epoch boundaries and logging points included, and the epoch-boundary lines give
their cost apart. The logged `speed/train_images_per_s` of the `fit` phase is printed beside the wall-clock
rate of the same steps. MFU is the counted FLOPs per second over the device's dense peak
(`speed_monitor.peak_flops`: our table, then Lightning's, `--peak_tflops` elsewhere).

`measure` returns all of it as a dict; `experiments.measure.device_check` calls it for its GPU parts.
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
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI

from datamodules.voc import IGNORE_INDEX
from lightning_modules.components.complexity import protocol_cost, train_step_flops
from lightning_modules.components.protocol import MS_SCALES
from lightning_modules.components.inference import labels_from, predict_probabilities
from lightning_modules.run.record import METRICS_FILE, read_records
from lightning_modules.run.speed_monitor import peak_flops, peak_memory_mb, reset_peak_memory, synchronize

from experiments.cli.training import BASE_CONFIG, CLI_KWARGS, TrainCLI
from experiments.cli.flags import add_flag


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


def validation_stall(module, loader, device: torch.device, precision: str, batches: int) -> float:
    """What Lightning's loop does at `val_check_interval`, bare: `batches` validation batches at the eval
    output stride, then back to training. Returns its seconds (synchronised at both ends)."""
    synchronize(device)
    t0 = time.perf_counter()
    module.eval()
    module.net.set_output_stride(module.eval_protocol.output_stride)
    module.metrics.reset()
    evaluate(module, loader, device, precision, batches)
    module.net.set_output_stride(module.train_output_stride)
    module.train()
    synchronize(device)
    return time.perf_counter() - t0


def bare_train(cli: LightningCLI, device: torch.device, warmup: int, steps: int,
               val_every: int | None = None, val_batches: int = 0) -> tuple[Phase, StepClock, float]:
    """The bare loop; with `val_every`, a validation stall every `val_every` steps as in `fit`. Returns the
    timed window, its step clock and the seconds of validation inside the window."""
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
    val_loader = data.val_dataloader() if val_every else None
    # fp16 needs loss scaling, as Lightning's 16-mixed plugin does (a no-op for other precisions)
    scaler = torch.amp.GradScaler(device.type, enabled=str(trainer.precision) == "16-mixed")
    phase, steps_clock = Phase(device), StepClock(warmup)
    step, epoch, stalls = 0, 0, 0.0
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
            if val_every and step % val_every == 0:
                seconds = validation_stall(module, val_loader, device, trainer.precision, val_batches)
                stalls += seconds if step > warmup else 0.0
            if step == warmup:
                phase.start()
            if step == warmup + steps:
                phase.stop()
                break
            steps_clock.step_end()
        epoch += 1
    return phase, steps_clock, stalls


class FitClock(L.Callback):
    """The bare loop's clock inside `fit`: after step `warmup` and after step `warmup + steps`, and the
    seconds spent in validation between the two."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.phase, self.clock = Phase(device), StepClock(warmup)
        self.warmup, self.steps = warmup, steps
        self.device, self.val_seconds, self._val_t0 = device, 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.step_start(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.phase.start()
        elif trainer.global_step == self.warmup + self.steps:
            self.phase.stop()
        self.clock.step_end()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.warmup < trainer.global_step <= self.warmup + self.steps:
            synchronize(self.device)
            self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_t0 is not None:
            synchronize(self.device)
            self.val_seconds += time.perf_counter() - self._val_t0
            self._val_t0 = None


def lightning_train(cli: LightningCLI, device: torch.device, warmup: int, steps: int) -> FitClock:
    clock = FitClock(device, warmup, steps)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock


def logged_train_rate(run_dir: Path, warmup: int, steps: int) -> float | None:
    """`speed/train_images_per_s` as the run logged it over the timed steps: the images of the window over
    the sum of each logging window's images / logged rate (None when no logging point falls in it)."""
    rates = []
    for path in run_dir.rglob(METRICS_FILE):
        for record in read_records(path):
            if warmup < record["step"] <= warmup + steps and "speed/train_images_per_s" in record["metrics"]:
                rates.append((record["step"], record["metrics"]["speed/train_images_per_s"]))
    if not rates:
        return None
    rates.sort()
    previous, seconds = warmup, 0.0
    for step, rate in rates:
        seconds += (step - previous) / rate  # the batch size cancels: a harmonic mean of the rates
        previous = step
    return (previous - warmup) / seconds


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


def evaluate(module, loader, device: torch.device, precision: str, batches: int,
             after_first: Callable[[], None] | None = None) -> int:
    """Predictions and the confusion matrix of up to `batches` batches, as the module's validation does;
    `after_first` runs once the first batch is done. Returns the images after the first batch."""
    seen = first = 0
    with torch.inference_mode(), autocast(device, precision):
        for i, batch in enumerate(loader):
            batch = [t.to(device, non_blocking=True) for t in batch]
            x, masks = module.on_after_batch_transfer(batch, 0)
            probs = predict_probabilities(module.net, x, module.eval_protocol)
            module.metrics.update(labels_from(probs), masks)
            if not i:
                first = x.shape[0]
                if after_first:
                    after_first()
            seen += x.shape[0]
            if i + 1 >= batches:
                break
        module.metrics.compute()
    return seen - first


def bare_eval(cli: LightningCLI, device: torch.device, batches: int) -> tuple[Phase, int]:
    """Validation without Lightning, timed from the end of the first batch (worker start-up excluded, as in
    `lightning_eval`) to the end of the last."""
    module, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("validate")
    module.trainer = cli.trainer  # setup reads the datamodule's labels through it
    module.setup("validate")
    module.to(device).eval()
    module.net.set_output_stride(module.eval_protocol.output_stride)
    module.metrics.reset()
    phase = Phase(device)
    images = evaluate(module, data.val_dataloader(), device, cli.trainer.precision, batches, phase.start)
    phase.stop()
    return phase, images


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


def figures(images: int, phase: Phase, steps: int | None, flops_per_image: float | None,
            peak: float | None) -> dict[str, float | None]:
    """One phase's numbers: images/s, ms per step (training) or per image (evaluation), peak MB, MFU."""
    rate = images / phase.seconds
    return {"images_per_s": rate,
            "ms_per_step" if steps else "ms_per_image": 1000 * phase.seconds / (steps or images),
            "peak_memory_mb": phase.peak_mb,
            "mfu": flops_per_image * rate / peak if flops_per_image and peak else None}


def format_row(name: str, f: dict[str, float | None]) -> str:
    per = (f"{f['ms_per_step']:8.1f} ms/step " if "ms_per_step" in f else f"{f['ms_per_image']:8.1f} ms/image")
    mfu = f"{f['mfu']:6.1%}" if f["mfu"] is not None else "   n/a"
    return f"  {name:<24} {f['images_per_s']:8.2f} img/s {per}  peak {f['peak_memory_mb']:8.0f} MB  MFU {mfu}"


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


#: evaluation protocols `main` measures: label → config overrides
PROTOCOLS = {"single scale": {}, "MS + flip": {"model.eval_scales": str(list(MS_SCALES)), "model.eval_flip": "true"}}


def measure(config_args: list[str], *, steps: int, warmup: int, eval_images: int | None = None,
            protocols: dict[str, dict[str, str]] | None = None, train: bool = True, loader: bool = True,
            val_every: int | None = None, val_batches: int = 2, peak_tflops: float | None = None,
            compare: bool = True, say: Callable[[str], None] = lambda line: None) -> dict:
    """Every phase of the module docstring for the config `config_args` (CLI arguments, overrides
    included), as a dict; `say` gets the report's lines as they are measured. `train=False` measures
    evaluation only; `val_every` puts a `val_batches`-batch validation every `val_every` steps into both
    training loops (their mean rates then include validation stalls, their steady states do not).
    `compare=False` runs Lightning's `fit` and `validate` alone (no bare loops, no ratios)."""
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    total = warmup + steps
    protocols = PROTOCOLS if protocols is None else protocols
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        def cli(name: str, **extra: str) -> LightningCLI:
            import wandb

            wandb.finish()  # one W&B run per phase
            settings = {"trainer.max_steps": str(total), "trainer.limit_val_batches": "0", "trainer.devices": "1"}
            return build(config_args, Path(tmp) / name, {**settings, **extra})

        first = cli("bare-1")
        device = first.trainer.strategy.root_device
        precision = first.trainer.precision
        model, data = first.model, first.datamodule
        net = model.net
        batch, crop = data.hparams.batch_size, data.hparams.crop_size
        peak = peak_flops(device, precision, peak_tflops)
        eval_images = eval_images or (6 if device.type == "cpu" else 100)
        train_flops = train_step_flops(net.config, (batch, 3, crop, crop), model.train_output_stride) / batch
        result.update(device=device_name(device), torch=torch.__version__, lightning=L.__version__,
                      backbone=net.config["backbone"], output_stride=model.train_output_stride, batch=batch,
                      crop=crop, precision=str(precision), channels_last=bool(model.hparams.channels_last),
                      compile=bool(model.hparams.get("compile", False)), peak_tflops=peak / 1e12 if peak else None,
                      train_gflop_per_image=train_flops / 1e9)
        say(f"device: {result['device']} | torch {torch.__version__} | lightning {L.__version__}")
        say(f"  {net.config['backbone']} OS{model.train_output_stride} (eval OS{model.eval_protocol.output_stride}), "
            f"batch {batch} x {crop}x{crop}, precision {precision}, channels_last "
            f"{model.hparams.channels_last}, compile {result['compile']}, "
            f"{data.hparams.num_workers} loader workers; {train_flops / 1e9:.1f} GFLOP per training image"
            + ("" if peak else "; MFU needs --peak_tflops on this device"))

        if train:
            result["train"] = train_phases(cli, first, device, warmup, steps, val_every, val_batches,
                                           train_flops, peak, loader, Path(tmp) / "fit", compare, say)
        result["eval"] = {}
        for label, protocol in protocols.items():
            settings = {"trainer.limit_val_batches": str(eval_images), **protocol}
            bare_cli = cli(f"eval-bare-{label}", **settings)
            m = bare_cli.model
            p = m.eval_protocol
            say(f"eval {label}, OS{p.output_stride}, scales {list(p.scales)}, flip {p.flip}, canvas {p.canvas}:")
            eval_flops = 2e9 * protocol_cost(m.net.config, p)["speed/multiply_adds"]
            if not compare:
                phase, n = lightning_eval(bare_cli, device)
                lightning = figures(n, phase, None, eval_flops, peak)
                say(format_row("lightning validate", lightning))
                result["eval"][label] = {"output_stride": p.output_stride, "scales": list(p.scales), "flip": p.flip,
                                         "phases": {"lightning": lightning}, "ratio": None}
                continue
            bare_eval(bare_cli, device, eval_images)  # untimed: kernels for each image size are chosen once
            phases = {"bare (before)": bare_eval(bare_cli, device, eval_images),
                      "lightning": lightning_eval(cli(f"eval-lightning-{label}", **settings), device),
                      "bare (after)": bare_eval(cli(f"eval-bare-after-{label}", **settings), device, eval_images)}
            rows = {name: figures(n, phase, None, eval_flops, peak) for name, (phase, n) in phases.items()}
            say(format_row("bare loop (before)", rows["bare (before)"]))
            say(format_row("lightning validate", rows["lightning"]))
            say(format_row("bare loop (after)", rows["bare (after)"]))
            bare_rate = statistics.mean((rows["bare (before)"]["images_per_s"], rows["bare (after)"]["images_per_s"]))
            ratio = rows["lightning"]["images_per_s"] / bare_rate
            say(f"  lightning/bare (eval)    {ratio:.3f}")
            result["eval"][label] = {"output_stride": p.output_stride, "scales": list(p.scales), "flip": p.flip,
                                     "phases": rows, "ratio": ratio}
        if protocols:
            say("  (eval MFU counts 513x513 images)")
        import wandb

        wandb.finish()
    return result


def train_phases(cli: Callable[..., LightningCLI], first: LightningCLI, device: torch.device, warmup: int,
                 steps: int, val_every: int | None, val_batches: int, train_flops: float, peak: float | None,
                 loader: bool, fit_dir: Path, compare: bool, say: Callable[[str], None]) -> dict:
    """Bare loop, Lightning `fit`, bare loop again (and the loader alone): rates, steady states, ratios and
    the logged speed against the wall clock."""
    batch = first.datamodule.hparams.batch_size
    say(f"train: {steps} steps after {warmup} warm-up steps, loader wait and epoch boundaries included"
        + (f", {val_batches} validation batches every {val_every} steps" if val_every else ""))
    fit_settings = {"trainer.log_every_n_steps": str(warmup)}  # logging windows tile the timed steps
    if val_every:
        fit_settings.update({"trainer.val_check_interval": str(val_every),
                             "trainer.limit_val_batches": str(val_batches)})
    images = batch * steps
    if not compare:
        fit = lightning_train(cli("fit", **fit_settings), device, warmup, steps)
        lightning = figures(images, fit.phase, steps, train_flops, peak)
        say(format_row("lightning fit", lightning))
        logged = logged_train_rate(fit_dir, warmup, steps)
        return {"phases": {"lightning": lightning}, "steady_ms": {"lightning": fit.clock.steady_ms()},
                "wall_images_per_s": images / (fit.phase.seconds - fit.val_seconds),
                "logged_images_per_s": logged}
    bare1, bare1_steps, bare1_val = bare_train(first, device, warmup, steps, val_every, val_batches)
    fit = lightning_train(cli("fit", **fit_settings), device, warmup, steps)
    bare2, bare2_steps, bare2_val = bare_train(cli("bare-2"), device, warmup, steps, val_every, val_batches)
    rows = {"bare (before)": figures(images, bare1, steps, train_flops, peak),
            "lightning": figures(images, fit.phase, steps, train_flops, peak),
            "bare (after)": figures(images, bare2, steps, train_flops, peak)}
    say(format_row("bare loop (before)", rows["bare (before)"]))
    say(format_row("lightning fit", rows["lightning"]))
    say(format_row("bare loop (after)", rows["bare (after)"]))
    if loader:
        rows["loader"] = figures(images, loader_alone(cli("loader"), device, warmup, steps), steps, None, None)
        say(format_row("data loader alone", rows["loader"]))
    steady = {"bare (before)": bare1_steps.steady_ms(), "lightning": fit.clock.steady_ms(),
              "bare (after)": bare2_steps.steady_ms()}
    say("  steady state, median step " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in steady.items()))
    boundaries = {}
    for name, clock in (("bare", bare1_steps), ("lightning", fit.clock)):
        extra, count = clock.boundary_ms()
        boundaries[name] = extra
        say(f"  epoch boundary, {name:<9}  " + ("no boundary in the timed steps" if extra is None else
                                                f"{extra:+8.1f} ms over a step inside an epoch ({count} boundaries)"))
    bare_steady = statistics.mean((steady["bare (before)"], steady["bare (after)"]))
    bare_mean = statistics.mean((rows["bare (before)"]["images_per_s"], rows["bare (after)"]["images_per_s"]))
    train_seconds = fit.phase.seconds - fit.val_seconds  # what the run's own speed figures count
    logged = logged_train_rate(fit_dir, warmup, steps)
    result = {"phases": rows, "steady_ms": steady, "epoch_boundary_ms": boundaries,
              "validation_s": {"bare": statistics.mean((bare1_val, bare2_val)), "lightning": fit.val_seconds},
              "ratio_steady": bare_steady / steady["lightning"], "ratio_mean": rows["lightning"]["images_per_s"] / bare_mean,
              "wall_images_per_s": images / train_seconds,
              "logged_images_per_s": logged}
    if val_every:
        say(f"  validation inside the timed steps, bare {result['validation_s']['bare']:.2f} s, lightning "
            f"{fit.val_seconds:.2f} s")
    say(f"  logged speed/train_images_per_s " + (f"{result['logged_images_per_s']:.2f}" if logged else "n/a")
        + f", wall clock (validation excluded) {result['wall_images_per_s']:.2f} img/s")
    say(f"lightning/bare, whole window (epoch boundaries, logging points included) {result['ratio_mean']:.3f}")
    say(f"lightning/bare {result['ratio_steady']:.3f}")
    return result



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for experiments.train")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per phase")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    add_flag(parser, "--eval_images", "--eval-images", type=int, default=None,
             help="validation images per evaluation phase (the first one untimed); default 100 on GPUs, 6 on CPUs")
    add_flag(parser, "--no_ms_flip", "--no-ms-flip", action="store_true",
             help="skip the multi-scale + flip evaluation (11 network passes per image: minutes per image for "
                  "ResNet-101 on a CPU)")
    add_flag(parser, "--peak_tflops", "--peak-tflops", type=float, default=None,
             help="dense peak TFLOP/s of one device in the run's precision, for MFU on devices missing from our "
                  "and Lightning's tables (CPUs, new GPUs)")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 2 or args.warmup < 1:
        parser.error(f"--steps must be at least 2 and --warmup at least 1 (got {args.steps}, {args.warmup}): the "
                     "steady state is the median interval between timed steps")
    report = [f"config: {' '.join(args.config)} {' '.join(overrides)}"]
    protocols = {k: v for k, v in PROTOCOLS.items() if not (args.no_ms_flip and v)}
    measure([f"--config={c}" for c in args.config] + overrides, steps=args.steps, warmup=args.warmup,
            eval_images=args.eval_images, protocols=protocols, peak_tflops=args.peak_tflops, say=report.append)
    # printed at the end: Lightning's progress bar writes to stdout while the phases run
    print("\n".join(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
