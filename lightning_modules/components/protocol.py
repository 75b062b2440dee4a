"""The evaluation protocol, defined once: output stride, scales, flip and the canvas images are evaluated on.

Inference (`lightning_modules.components.inference`), Multiply-Adds counting (`complexity.py`), the ablation rows and
the logged run metadata all read an `EvalProtocol`; nothing else spells these rules out.

Why a canvas: bilinear resizing with `align_corners=True` (ours and TF's) maps feature cell k exactly
onto pixel k · output_stride only when `(size − 1)` is a multiple of the output stride. The official
`eval.py` therefore pastes every VOC image into a 513×513 canvas (image padded with the mean pixel,
label with 255) and crops the prediction back; evaluating a 500×375 image as it is shifts predictions
by up to a few pixels towards the borders.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

#: the paper's crop, for training and evaluation on VOC (official `eval_crop_size` 513,513)
PAPER_CROP = 513
#: the paper's multi-scale inputs (DeepLabv3 §4.2)
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: scales are multiples of 1/4: a canvas with (size − 1) divisible by 4 · output_stride stays aligned
#: at every scale, (513 − 1) · 0.75 = 384 = 24 · 16
SCALE_GRANULARITY = 4


def scale_dimension(dim: int, scale: float) -> int:
    """The official code's rounding of a scaled size: int((dim − 1) · scale + 1), 513 → 257 at 0.5."""
    return int((dim - 1) * scale + 1)


def is_aligned(size: int, output_stride: int) -> bool:
    """Feature cell k lands exactly on pixel k · output_stride under align_corners resizing."""
    return (size - 1) % output_stride == 0


@dataclass(frozen=True)
class EvalProtocol:
    """How an image is scored (paper Tables 3 and 5 columns; official `eval.py` flags).

    Args:
        output_stride: eval output stride (None: the training output stride).
        scales: input scales whose class probabilities are averaged ((1.0,) = single scale).
        flip: add left-right flipped inputs.
        canvas: (height, width) every image is pasted into, bottom/right padded (official
            `eval_crop_size`, 513×513 for VOC, 1025×2049 for Cityscapes). An image larger than the canvas
            gets the smallest aligned canvas that holds it. None: always the smallest aligned canvas.
    """

    output_stride: int | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    canvas: tuple[int, int] | None = (PAPER_CROP, PAPER_CROP)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.canvas is not None:
            canvas = (self.canvas, self.canvas) if isinstance(self.canvas, int) else tuple(int(c) for c in self.canvas)
            object.__setattr__(self, "canvas", canvas)
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"eval scales must be positive numbers, got {list(self.scales)}")

    def resolve(self, train_output_stride: int) -> "EvalProtocol":
        """The protocol with its output stride filled in, the canvas checked against it."""
        resolved = EvalProtocol(self.output_stride or train_output_stride, self.scales, self.flip, self.canvas)
        if resolved.canvas is not None:
            align = SCALE_GRANULARITY * resolved.output_stride
            if any((side - 1) % align for side in resolved.canvas):
                raise ValueError(
                    f"eval canvas {list(resolved.canvas)} is not aligned for output stride {resolved.output_stride}: "
                    f"each side minus 1 must be a multiple of {align} (e.g. 513, 769, 1025)")
        return resolved

    def canvas_size(self, height: int, width: int) -> tuple[int, int]:
        """The aligned canvas an image of this size is evaluated on (call on a resolved protocol)."""
        align = SCALE_GRANULARITY * self.output_stride
        floor = self.canvas or (1, 1)

        def fit(side: int, minimum: int) -> int:
            side = max(side, minimum)
            return side if (side - 1) % align == 0 else ((side - 1) // align + 1) * align + 1

        return fit(height, floor[0]), fit(width, floor[1])

    @property
    def multi_scale(self) -> bool:
        return len(self.scales) > 1

    def describe(self) -> str:
        """"OS8 MS flip": the columns of the paper's tables."""
        return f"OS{self.output_stride}" + (" MS" if self.multi_scale else "") + (" flip" if self.flip else "")

    def as_dict(self) -> dict:
        """For run metadata and W&B config: the keys the config file uses."""
        d = asdict(self)
        return {"eval_output_stride": d["output_stride"], "eval_scales": list(d["scales"]), "eval_flip": d["flip"],
                "eval_canvas": None if d["canvas"] is None else list(d["canvas"])}


def protocol_from(output_stride: int | None, scales: Sequence[float], flip: bool,
                  canvas: int | Sequence[int] | None) -> EvalProtocol:
    """From the config keys (`model.eval_output_stride`, `eval_scales`, `eval_flip`, `eval_canvas`)."""
    if canvas is not None and not isinstance(canvas, int):
        canvas = tuple(canvas)
    return EvalProtocol(output_stride, tuple(scales), flip, canvas)
