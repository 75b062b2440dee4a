"""Sliding-window (`experiments.predict --tile`) against whole-image prediction: time and peak memory for a
few image sizes, and how often the two agree on a pixel's class.

    python -m experiments.measure.tiling                                  # random MobileNetV2 OS16, 3 sizes
    python -m experiments.measure.tiling --ckpt_path runs/.../last.ckpt --sizes 1500x1125 6000x4000
    python -m experiments.measure.tiling --device cuda --whole_max_pixels 0   # tiled only

Every measurement is one `experiments.predict` run in a fresh process on a generated JPEG (reading the
JPEG and writing the palette mask included), so that its peak memory is its own: the peak resident set
size of the process (`os.wait4`), and on a GPU `torch.cuda.max_memory_allocated` after a synchronisation.
`seconds` is the wall-clock time of `experiments.predict.main` (after a device synchronisation); `CPU s`
is the processor time of the whole process (start-up included), which moves less than the wall clock
when other processes share the CPU.
Without `--ckpt_path` a randomly initialised MobileNetV2 (OS16, decoder, 21 classes) is saved and used:
its speed and memory are those of a trained one, its labels are not — the agreement line needs a trained
checkpoint to mean anything. Timings on a machine other processes share move with their load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from experiments.measure.benchmark import device_name

DEFAULT_SIZES = ("1500x1125", "3000x2000", "6000x4000")


def random_checkpoint(path: Path, crop: int = 513) -> Path:
    """A checkpoint `load_model` reads: a randomly initialised MobileNetV2 OS16 with the VOC classes."""
    from datamodules.voc import VOC_LABELS
    from lightning_modules.components import DeepLabV3Plus

    config = {"backbone": "mobilenet_v2", "num_classes": 21, "output_stride": 16, "weights": None}
    net = DeepLabV3Plus(**config)
    torch.save({"net_config": config, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "labels": VOC_LABELS.as_dict(), "datamodule_hyper_parameters": {"crop_size": crop}}, path)
    return path


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (a low-resolution noise field upsampled): JPEG-sized like a photo."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.BILINEAR))


def run_predict(args: list[str], device: str) -> dict:
    """One `experiments.predict` in a child process: wall seconds, peak RSS (GB), CUDA peak (GB)."""
    code = ("import json, sys, time, torch; from experiments.predict import main; t = time.perf_counter(); "
            f"rc = main({args!r} + ['--device', {device!r}]); "
            "torch.cuda.synchronize() if torch.cuda.is_available() else None; "
            "peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None; "
            "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, 'cuda_gb': peak}))")
    out_r, out_w = os.pipe()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=out_w, stderr=subprocess.DEVNULL)
    os.close(out_w)
    with os.fdopen(out_r) as stdout:
        lines = stdout.read().strip().splitlines()
    _, status, usage = os.wait4(process.pid, 0)
    result = json.loads(lines[-1]) if lines else {"rc": status, "seconds": None, "cuda_gb": None}
    result["rss_gb"] = usage.ru_maxrss * 1024 / 1e9  # kilobytes on Linux
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the whole process, start-up included
    return result


def agreement(a: Path, b: Path) -> float:
    return float((np.asarray(Image.open(a)) == np.asarray(Image.open(b))).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", default=None, help="a checkpoint (default: a random MobileNetV2 OS16)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT of each image")
    parser.add_argument("--whole_max_pixels", type=float, default=30e6,
                        help="skip the whole-image run above this many pixels (0: tiled only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("predict_args", nargs="*", help="more experiments.predict options, after --")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ckpt = args.ckpt_path or str(random_checkpoint(tmp_path / "random.ckpt"))
        print(f"device: {device_name(torch.device(args.device))}; checkpoint: {args.ckpt_path or 'random MobileNetV2 OS16'}")
        print(f"{'image':>11} {'mode':>6} {'seconds':>8} {'CPU s':>8} {'peak RSS GB':>12} {'CUDA GB':>8}")
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            image = tmp_path / f"{size}.jpg"
            Image.fromarray(photo_like(width, height)).save(image, quality=90)
            masks = {}
            for mode in ("whole", "tile"):
                if mode == "whole" and width * height > args.whole_max_pixels:
                    print(f"{size:>11} {mode:>6} skipped (above --whole_max_pixels)")
                    continue
                out = tmp_path / mode / size
                result = run_predict(["--ckpt_path", ckpt, "--input", str(image), "--output", str(out),
                                      *(["--tile"] if mode == "tile" else []), *args.predict_args], args.device)
                if result["rc"] != 0:
                    print(f"{size:>11} {mode:>6} failed (exit {result['rc']})")
                    continue
                masks[mode] = out / f"{size}.png"
                cuda = f"{result['cuda_gb']:.2f}" if result["cuda_gb"] is not None else "-"
                print(f"{size:>11} {mode:>6} {result['seconds']:>8.1f} {result['cpu_seconds']:>8.1f} "
                      f"{result['rss_gb']:>12.2f} {cuda:>8}", flush=True)
            if len(masks) == 2:
                print(f"{size:>11} tiled and whole-image labels agree on {agreement(masks['whole'], masks['tile']):.1%} "
                      "of the pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
