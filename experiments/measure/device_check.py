"""Every GPU claim of docs/speed.md measured by one command: a Markdown table on stdout, all numbers as JSON.

    python -m experiments.measure.device_check --output results/device_check   # on a GPU: the paper's sizes, <= 8 min
    python -m experiments.measure.device_check --small --output /tmp/check      # on a CPU: tiny sizes, the same code

Parts, each under its own time limit (a part that does not fit reports "skipped: out of time"):

1. `lightning`: ResNet-101 OS16 + decoder (`--backbones` without resnet101: the first listed), global batch 16, 513², bf16 + channels_last, generated data:
   the bare loop against Lightning's `fit` (W&B offline) with validation stalls and epoch boundaries in the
   window (`experiments.measure.benchmark.measure`): steady and mean images/s, their ratios, the logged
   `speed/train_images_per_s` against the wall clock, single-scale eval bare against `validate`.
2. `backbones`: docs/speed.md's per-backbone table (ResNet-101, Xception-65 + SC, MobileNetV2): train
   images/s, eval ms/image at OS16 single scale and OS8 MS + flip, peak memory, MFU (Lightning alone).
3. `predict_export`: a one-step checkpoint, `experiments.predict` and `experiments.export` (ONNX, run by
   onnxruntime) on the device; the exported model's classes agree with predict's.
4. `syncbn`: two DDP processes (NCCL, then gloo) against one process holding the whole batch
   (`experiments.measure.syncbn_check`), and per-process BN as the control.
5. `compile`: part 1's comparison with `--model.compile true`, if time is left.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_modules.components.protocol import MS_SCALES
from experiments.cli.flags import add_flag

from . import benchmark, syncbn_check

CONFIGS = {"resnet101": "experiments/configs/resnet101_os16.yaml",
           "xception65": "experiments/configs/xception65_os16.yaml",
           "mobilenet_v2": "experiments/configs/mobilenetv2_os16.yaml"}
MS_FLIP = {"model.eval_scales": str(list(MS_SCALES)), "model.eval_flip": "true"}
PARTS = ("lightning", "backbones", "predict_export", "syncbn", "compile")


@dataclass
class Sizes:
    """One setting of every size the parts use; `limits` are seconds per part, `total` for the run."""
    crop: int
    batch: int
    steps: int
    warmup: int
    val_every: int
    val_batches: int
    eval_images: int
    workers: int
    syncbn_size: int
    limits: dict[str, int] = field(default_factory=dict)
    total: int = 480


#: the paper's training sizes on one GPU, within 8 minutes
GPU = Sizes(crop=513, batch=16, steps=40, warmup=10, val_every=20, val_batches=8, eval_images=20, workers=12,
            syncbn_size=129, limits={"lightning": 130, "backbones": 170, "predict_export": 60, "syncbn": 60,
                                     "compile": 150}, total=470)
#: seconds on a CPU: the code path, never a speed
SMALL = Sizes(crop=33, batch=2, steps=2, warmup=1, val_every=2, val_batches=1, eval_images=2, workers=0,
              syncbn_size=33, limits={p: 600 for p in PARTS}, total=3000)


class OutOfTime(Exception):
    pass


def _alarm(signum, frame):
    raise OutOfTime


def config_args(backbone: str, sizes: Sizes, data_root: Path, small: bool, **extra: str) -> list[str]:
    """The CLI arguments of a backbone's config at these sizes, generated data, no weights download."""
    configs = [CONFIGS[backbone], *(["experiments/configs/smoke.yaml"] if small else [])]
    overrides = {"data.root": str(data_root), "data.generate": "true", "data.crop_size": str(sizes.crop),
                 "data.batch_size": str(sizes.batch), "data.num_workers": str(sizes.workers),
                 "model.net.init_args.weights": "null", "trainer.precision": "bf16-mixed",
                 "model.channels_last": "true", "trainer.enable_progress_bar": "false",
                 "trainer.num_sanity_val_steps": "0", **({"model.eval_canvas": "null"} if small else {}), **extra}
    return [f"--config={c}" for c in configs] + [f"--{k}={v}" for k, v in overrides.items()]


def part_lightning(sizes: Sizes, data_root: Path, small: bool, backbone: str, compile: bool = False) -> dict:
    extra = {"model.compile": "true"} if compile else {}
    return benchmark.measure(config_args(backbone, sizes, data_root, small, **extra), steps=sizes.steps,
                             warmup=sizes.warmup, eval_images=sizes.eval_images, val_every=sizes.val_every,
                             val_batches=sizes.val_batches, protocols={} if compile else {"OS16 single scale": {}},
                             say=print)


def part_backbones(sizes: Sizes, data_root: Path, small: bool, rows: dict, backbones: list[str]) -> dict:
    # small mode: two scales of the multi-scale path (six full-size ResNet-101 OS8 passes cost minutes on a CPU)
    ms_flip = {**MS_FLIP, "model.eval_scales": "[0.5,0.75]"} if small else MS_FLIP
    protocols = {"OS16 single scale": {"model.eval_output_stride": "16"},
                 "OS8 MS + flip": {"model.eval_output_stride": "8", **ms_flip}}
    for backbone in backbones:  # rows fill as they finish: a part stopped by its limit keeps them
        rows[backbone] = benchmark.measure(config_args(backbone, sizes, data_root, small), steps=sizes.steps,
                                           warmup=sizes.warmup, eval_images=sizes.eval_images,
                                           protocols=protocols, loader=False, compare=False, say=print)
    return rows


def part_predict_export(sizes: Sizes, data_root: Path, small: bool, work: Path) -> dict:
    """A checkpoint of one step, then predict and export as a user runs them; ONNX classes vs predict's."""
    import onnxruntime

    from experiments import export, predict, train

    run_dir = work / "predict-run"
    args = config_args("mobilenet_v2", sizes, data_root, small, **{
        "trainer.max_steps": "1", "trainer.val_check_interval": "1", "trainer.limit_val_batches": "1",
        "trainer.logger.init_args.save_dir": str(run_dir)})
    import wandb

    train.main(["fit", *args])
    wandb.finish()
    ckpt = next(run_dir.rglob("last.ckpt"))
    image = next((data_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    assert predict.main(["--ckpt_path", str(ckpt), "--input", str(image), "--output", str(work / "masks"),
                         "--device", device]) == 0
    predict_s = time.perf_counter() - t0
    assert export.main(["--ckpt_path", str(ckpt), "--output", str(work / "model.onnx")]) == 0
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in onnxruntime.get_available_providers()]
    session = onnxruntime.InferenceSession(str(work / "model.onnx"), providers=providers)
    rgb = np.asarray(Image.open(image).convert("RGB")).transpose(2, 0, 1)[None]
    onnx_labels = session.run(None, {"image": rgb})[0].argmax(1)[0]
    predict_labels = np.asarray(Image.open(work / "masks" / f"{image.stem}.png"))
    return {"device": device, "predict_s": predict_s, "onnx_providers": session.get_providers(),
            "agreement": float((onnx_labels == predict_labels).mean())}


def part_syncbn(sizes: Sizes, limit: float) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = {}
    backends = (["nccl"] if device == "cuda" else []) + ["gloo"]
    for backend in backends:
        runs[f"SyncBN, {backend}"] = syncbn_check.compare(backend, device, True, sizes.syncbn_size, limit / 4)
    runs["per-process BN (control), gloo"] = syncbn_check.compare("gloo", device, False, sizes.syncbn_size, limit / 4)
    return {"device": device, "runs": runs}


def run_part(name: str, limit: float, deadline: float, fn, partial: dict | None = None) -> dict:
    """`fn()` under min(limit, time left); its result, or why it has none."""
    left = deadline - time.perf_counter()
    if left < min(30, limit):
        return {"status": "skipped: out of time", **({"result": partial} if partial else {})}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(min(limit, left))))
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", "result": fn()}
    except OutOfTime:
        result = {"status": f"stopped: out of time after {time.perf_counter() - t0:.0f} s",
                  **({"result": partial} if partial else {})}
    except Exception as e:  # a part that breaks is reported and the others still run
        result = {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    finally:
        signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"device_check: {name}: {result['status']} ({result['seconds']} s)", flush=True)
    return result


def _f(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(report: dict) -> str:
    """The Markdown table of the report (device_check.md)."""
    lines = [f"device: {report['device']} | torch {report['torch']} | {report['mode']} mode", ""]
    lines += ["| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {part['status']} | {part.get('seconds', '')} |" for name, part in report["parts"].items()]
    for name in ("lightning", "compile"):
        r = report["parts"][name].get("result")
        if not r:
            continue
        t, ph = r["train"], r["train"]["phases"]
        lines += ["", f"**{name}** ({r['backbone']} OS{r['output_stride']}, batch {r['batch']} x {r['crop']}², "
                      f"{r['precision']}, channels_last {r['channels_last']}, compile {r['compile']})", "",
                  "| loop | steady ms/step | mean img/s | peak MB | MFU | epoch boundary ms | validation s |",
                  "|---|---|---|---|---|---|---|"]
        for loop, key in (("bare (before)", "bare (before)"), ("lightning", "lightning"), ("bare (after)", "bare (after)")):
            side = "lightning" if key == "lightning" else "bare"
            lines.append(f"| {loop} | {_f(t['steady_ms'][key])} | {_f(ph[key]['images_per_s'], '.2f')} | "
                         f"{_f(ph[key]['peak_memory_mb'], '.0f')} | {_f(ph[key]['mfu'], '.1%')} | "
                         f"{_f(t['epoch_boundary_ms'][side])} | {_f(t['validation_s'][side], '.2f')} |")
        lines += ["", f"lightning/bare steady {_f(t['ratio_steady'], '.3f')}, mean {_f(t['ratio_mean'], '.3f')}; "
                      f"logged speed/train_images_per_s {_f(t['logged_images_per_s'], '.2f')} vs wall clock "
                      f"{_f(t['wall_images_per_s'], '.2f')} img/s"]
        for label, e in r.get("eval", {}).items():
            lines.append(f"eval {label}: bare {_f(e['phases']['bare (before)']['ms_per_image'])} / "
                         f"{_f(e['phases']['bare (after)']['ms_per_image'])} ms/image, validate "
                         f"{_f(e['phases']['lightning']['ms_per_image'])} ms/image, lightning/bare {_f(e['ratio'], '.3f')}")
    rows = report["parts"]["backbones"].get("result") or {}
    if rows:
        lines += ["", "| backbone | GFLOP/train image | train img/s | train peak MB | MFU | logged / wall img/s | "
                      "eval OS16 ms/image | eval OS8 MS+flip ms/image | eval peak MB |", "|---|---|---|---|---|---|---|---|---|"]
        for backbone, r in rows.items():
            train, ev = r["train"]["phases"]["lightning"], r["eval"]
            single, ms = ev["OS16 single scale"]["phases"]["lightning"], ev["OS8 MS + flip"]["phases"]["lightning"]
            lines.append(f"| {backbone} | {_f(r['train_gflop_per_image'])} | {_f(train['images_per_s'], '.2f')} | "
                         f"{_f(train['peak_memory_mb'], '.0f')} | {_f(train['mfu'], '.1%')} | "
                         f"{_f(r['train']['logged_images_per_s'], '.2f')} / {_f(r['train']['wall_images_per_s'], '.2f')} | "
                         f"{_f(single['ms_per_image'])} | {_f(ms['ms_per_image'])} | "
                         f"{_f(max(single['peak_memory_mb'], ms['peak_memory_mb']), '.0f')} |")
    p = report["parts"]["predict_export"].get("result")
    if p:
        lines += ["", f"predict + export on {p['device']}: ONNX ({', '.join(p['onnx_providers'])}) agrees with "
                      f"experiments.predict on {p['agreement']:.2%} of pixels"]
    s = report["parts"]["syncbn"].get("result")
    if s:
        lines += ["", f"SyncBN on {s['device']}, two processes vs one holding the whole batch (relative error):", "",
                  "| run | status | running mean | running var | gradients |", "|---|---|---|---|---|"]
        for run, c in s["runs"].items():
            lines.append(f"| {run} | {c['status']} | {_f(c.get('rel_mean'), '.1e')} | {_f(c.get('rel_var'), '.1e')} | "
                         f"{_f(c.get('rel_grad'), '.1e')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(parser, "--output", "--out", required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--small", action="store_true", help="tiny sizes, a few steps (the CPU test)")
    add_flag(parser, "--data.root", "--data-root", dest="data_root", default=None,
             help="generated VOC-format data (default: under --output)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--backbones", default=",".join(CONFIGS),
                        help="comma-separated backbones of the per-backbone table; the Lightning-vs-bare part runs "
                             "resnet101 when listed, else the first (the CPU test: mobilenet_v2 alone)")
    args = parser.parse_args(argv)
    backbones = args.backbones.split(",")
    if not backbones or set(backbones) - set(CONFIGS):
        parser.error(f"--backbones: expected a subset of {','.join(CONFIGS)}, got {args.backbones!r}")
    loop_backbone = "resnet101" if "resnet101" in backbones else backbones[0]
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {','.join(unknown)}; expected a subset of {','.join(PARTS)}")
    sizes = SMALL if args.small else GPU
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data_root) if args.data_root else out / "voc-synthetic"
    deadline = time.perf_counter() + sizes.total
    small = args.small
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"device": benchmark.device_name(device), "torch": torch.__version__,
              "mode": "small" if small else "full", "parts": {}}
    rows: dict = {}
    jobs = {
        "lightning": lambda: part_lightning(sizes, data_root, small, loop_backbone),
        "backbones": lambda: part_backbones(sizes, data_root, small, rows, backbones),
        "predict_export": lambda: part_predict_export(sizes, data_root, small, out),
        "syncbn": lambda: part_syncbn(sizes, sizes.limits["syncbn"]),
        "compile": lambda: part_lightning(sizes, data_root, small, loop_backbone, compile=True),
    }
    for name in PARTS:
        if name not in parts:
            report["parts"][name] = {"status": "skipped: not in --parts"}
        elif name == "compile" and small:
            # inductor's CPU code generation takes minutes on a small CPU: the GPU run measures it
            report["parts"][name] = {"status": "skipped: torch.compile runs in the GPU mode only"}
        else:
            report["parts"][name] = run_part(name, sizes.limits[name], deadline, jobs[name],
                                             rows if name == "backbones" else None)
        (out / "device_check.json").write_text(json.dumps(report, indent=1))
    text = table(report)
    (out / "device_check.md").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
