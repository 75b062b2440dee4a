"""Export a trained network for deployment: ONNX (dynamic batch, height and width) or `torch.export` (.pt2).

    python -m experiments.export --ckpt_path runs/quickstart/.../last.ckpt --output model.onnx
    python -m experiments.export --ckpt_path ... --output model.pt2 --output_stride 8

The exported graph takes what a deployment has: a uint8 RGB image batch, N×3×H×W, any H and W; the
backbone's input normalisation is inside the graph, and so is `experiments.predict`'s default canvas
(the image padded bottom/right with the mean pixel to the smallest aligned size, the logits cropped
back). It returns float logits N×C×H×W (argmax over C gives the class indices) for one scale, no flip.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.transforms import NORMALIZATIONS
from experiments.cli.checks import check_output_path
from lightning_modules.components.protocol import SCALE_GRANULARITY
from lightning_modules.pretrained import load_model

#: what `--output` may end in: the format is chosen by it
SUFFIXES = (".onnx", ".pt2")
#: smallest side the graph accepts: the backbone's stride-32 stage needs a few pixels
MIN_SIDE = 33


class NormalizedSegmenter(nn.Module):
    """uint8 RGB N×3×H×W → logits N×C×H×W: normalisation, the aligned canvas, the network, the crop.

    The canvas is `EvalProtocol(canvas=None)`'s: (side − 1) a multiple of 4 × output stride, so feature
    cells land on pixels exactly as in `validate` and `experiments.predict` (normalised padding 0 = the
    mean pixel, as `predict_probabilities` pads)."""

    def __init__(self, net: nn.Module, normalization: str) -> None:
        super().__init__()
        self.net = net
        self.align = SCALE_GRANULARITY * net.output_stride
        mean, std = NORMALIZATIONS[normalization]
        # (x / 255 − mean) / std = x · scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        x = image.float() * self.scale + self.shift
        a = self.align
        pad = (0, (a - (w - 1) % a) % a, 0, (a - (h - 1) % a) % a)
        # cropped by negative padding: a slice or `narrow` back to (h, w) makes torch.export guard on the
        # padding being non-zero, which fails dynamic shapes for already aligned sizes
        return F.pad(self.net(F.pad(x, pad)), tuple(-p for p in pad))


def exportable(net: nn.Module, output_stride: int | None = None) -> NormalizedSegmenter:
    """The network in eval mode at `output_stride` (default: its training stride), wrapped for export."""
    if output_stride:
        net.set_output_stride(output_stride)
    return NormalizedSegmenter(net, net.normalization).eval()


def _dynamic_shapes() -> dict:
    dim = torch.export.Dim
    return {"image": {0: dim("batch", min=1, max=64), 2: dim("height", min=MIN_SIDE, max=8192),
                      3: dim("width", min=MIN_SIDE, max=8192)}}


def export(model: NormalizedSegmenter, output: str | Path, example_size: tuple[int, int] = (97, 129)) -> Path:
    """Write `output` as ONNX (`.onnx`) or a `torch.export` program (`.pt2`), dynamic batch/height/width."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.randint(0, 256, (2, 3, *example_size), dtype=torch.uint8),)
    with torch.no_grad():
        if output.suffix == ".onnx":
            program = torch.onnx.export(model, example, dynamo=True, input_names=["image"], output_names=["logits"],
                                        dynamic_shapes=_dynamic_shapes())
            program.save(str(output))
        elif output.suffix == ".pt2":
            torch.export.save(torch.export.export(model, example, dynamic_shapes=_dynamic_shapes()), str(output))
        else:
            raise ValueError(f"--output {output}: expected a file name ending in {' or '.join(SUFFIXES)}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by experiments.train")
    parser.add_argument("--output", required=True, help="model.onnx or model.pt2")
    parser.add_argument("--output_stride", type=int, choices=(8, 16, 32), default=None,
                        help="output stride of the exported graph (default: the training output stride)")
    args = parser.parse_args(argv)
    try:
        check_output_path("--output", args.output, suffixes=SUFFIXES)  # before minutes of export
        net = load_model(args.ckpt_path)
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = export(exportable(net, args.output_stride), args.output)
    labels = path.with_name(path.stem + ".labels.json")
    labels.write_text(json.dumps({**net.labels.as_dict(), "normalization": net.normalization,
                                  "output_stride": net.output_stride, "input": "uint8 RGB N×3×H×W",
                                  "output": "logits N×C×H×W"}, indent=1))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB) and {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
