"""The paper's numbers, in one place: DeepLabV3+ Tables 1, 2, 3 and 5 and Figure 5(a) (PASCAL VOC 2012 val),
Table 6 (VOC 2012 test, scored by the evaluation server only) and Table 7(a) (Cityscapes val).

Each row holds its settings — overrides of the table's config for training, and of the evaluation protocol —
beside the paper's mIoU and Multiply-Adds (billions, 513×513, the whole evaluation protocol, counted by
tfprof on TF's graph: compare them with our `speed/multiply_adds_tf`). `experiments.complexity` puts our
count beside them; the ablation scripts (`ablations/table*.py`) train and evaluate the rows. Transcribed
from the paper (DeepLabV3+, ECCV 2018, §4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_modules.components.protocol import MS_SCALES

#: the official `multi_grid` for the ResNet-101 rows (Table 3's first block reprints DeepLabv3 Table 6,
#: MG(1, 2, 4); `common.py`: "set multi_grid = [1, 2, 4] when using provided resnet_v1 beta checkpoints")
RESNET_MULTI_GRID = [1, 2, 4]


@dataclass(frozen=True)
class Row:
    name: str
    train: dict[str, Any]  # overrides of the table's config: what is trained
    eval: dict[str, Any] = field(default_factory=dict)  # overrides of `model.eval_*`: how it is scored
    paper_miou: float | None = None  # %
    paper_multiply_adds: float | None = None  # billions (tfprof, TF graph)
    reproducible: bool = True
    note: str = ""
    #: a config that replaces the table's for this row (Figure 5: the ResNet-101 and the Xception-65 rows)
    config: str | None = None
    #: the row this one's paired deltas are taken against (default: the table's `baseline`)
    baseline: str | None = None
    #: the paper's difference to the baseline row in trimap mIoU at the narrowest band (Figure 5: the decoder's gain)
    paper_trimap_gain: float | None = None


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    config: str
    rows: list[Row]
    #: the row every other row is compared with, over the seeds both ran (default: the first row)
    baseline: str | None = None
    #: overrides of `--profile smoke` beyond the small-run configs: a table on another dataset names its
    #: generated tree and canvas here (the small-run configs are VOC's)
    smoke: dict[str, Any] = field(default_factory=dict)

    def baseline_of(self, row: Row) -> str:
        return row.baseline or self.baseline or self.rows[0].name

    def config_of(self, row: Row) -> str:
        return row.config or self.config


def net(**kwargs: Any) -> dict[str, Any]:
    """`net(decoder="none")` → {"model.net.init_args.decoder": "none"}."""
    return {f"model.net.init_args.{k}": v for k, v in kwargs.items()}


def evaluation(output_stride: int | None = None, ms: bool = False, flip: bool = False) -> dict[str, Any]:
    """The protocol columns of Tables 3 and 5 as `model.eval_*` overrides (the canvas stays the config's)."""
    protocol: dict[str, Any] = {"model.eval_scales": list(MS_SCALES) if ms else [1.0], "model.eval_flip": flip}
    if output_stride:
        protocol["model.eval_output_stride"] = output_stride
    return protocol


def protocol_row(train_os: int, eval_os: int, decoder: bool, ms: bool, flip: bool, miou: float, madds: float,
                 separable: bool | None = None, reproducible: bool = True, note: str = "", suffix: str = "",
                 **settings: Any) -> Row:
    """A row of the inference-strategy tables (3 and 5): what is trained, and how it is evaluated."""
    train = net(output_stride=train_os, decoder="3x3:256,3x3:256" if decoder else "none", **settings)
    if separable is not None:
        train.update(net(aspp_separable=separable, decoder_separable=separable))
    name = f"train{train_os}-eval{eval_os}" + "".join(
        f"-{flag}" for flag, on in (("dec", decoder), ("ms", ms), ("flip", flip), ("sc", separable)) if on) + suffix
    return Row(name, train, evaluation(eval_os, ms, flip), miou, madds, reproducible, note)


TABLE1 = Table(
    name="table1_decoder_channels",
    title="Table 1: decoder 1×1 channels (ResNet-101, VOC 2012 val)",
    config="experiments/configs/resnet101_os16.yaml",
    rows=[Row(f"proj{c}", net(decoder="3x3:256", decoder_projection=c), paper_miou=miou)
          for c, miou in ((8, 77.61), (16, 77.92), (32, 78.16), (48, 78.21), (64, 77.94))],
)

TABLE2 = Table(
    name="table2_decoder_structure",
    title="Table 2: decoder structure (ResNet-101, VOC 2012 val)",
    config="experiments/configs/resnet101_os16.yaml",
    rows=[
        Row("conv2-3x3x256", net(decoder="3x3:256"), paper_miou=78.21),
        Row("conv2-3x3x256x2", net(decoder="3x3:256,3x3:256"), paper_miou=78.85),
        Row("conv2-3x3x256x3", net(decoder="3x3:256,3x3:256,3x3:256"), paper_miou=78.02),
        Row("conv2-3x3x128", net(decoder="3x3:128"), paper_miou=77.25),
        Row("conv2-1x1x256", net(decoder="1x1:256"), paper_miou=78.07),
        Row("conv2+conv3-3x3x256", net(decoder="3x3:256", decoder_low_level="conv2+conv3"), paper_miou=78.61),
    ],
)


def _resnet_row(*columns: Any) -> Row:
    return protocol_row(*columns, multi_grid=RESNET_MULTI_GRID)


#: 4 trainings (train output stride × decoder), 14 evaluations. Rows 1–4 are DeepLabv3's (no decoder);
#: row 3 is 79.45% (some copies of the paper print 78.45; DeepLabv3 Table 6 and its text give 79.45).
#: Every row sets multi-grid (1, 2, 4), the setting the paper ran.
TABLE3 = Table(
    name="table3_output_stride",
    title="Table 3: ResNet-101 train/eval output stride, decoder, multi-scale and flip (VOC 2012 val)",
    config="experiments/configs/resnet101_os16.yaml",
    rows=[
        #          train eval decoder MS    flip   mIoU   Multiply-Adds (B)
        _resnet_row(16, 16, False, False, False, 77.21, 81.02),
        _resnet_row(16, 8, False, False, False, 78.51, 276.18),
        _resnet_row(16, 8, False, True, False, 79.45, 2435.37),
        _resnet_row(16, 8, False, True, True, 79.77, 4870.59),
        _resnet_row(16, 16, True, False, False, 78.85, 101.28),
        _resnet_row(16, 16, True, True, False, 80.09, 898.69),
        _resnet_row(16, 16, True, True, True, 80.22, 1797.23),
        _resnet_row(16, 8, True, False, False, 79.35, 297.92),
        _resnet_row(16, 8, True, True, False, 80.43, 2623.61),
        _resnet_row(16, 8, True, True, True, 80.57, 5247.07),
        _resnet_row(32, 32, False, False, False, 75.43, 52.43),
        _resnet_row(32, 32, True, False, False, 77.37, 74.20),
        _resnet_row(32, 16, True, False, False, 77.80, 101.28),
        _resnet_row(32, 8, True, False, False, 77.92, 297.92),
    ],
    # every row sets multi-grid, which only ResNets have: the small run keeps a ResNet (50, from scratch) in
    # place of the small-run configs' MobileNetV2, each image scored on its own aligned canvas
    smoke={"model.net.init_args.backbone": "resnet50", "model.eval_canvas": None},
)

COCO = "needs an MS-COCO-pretrained checkpoint (not public in PyTorch form)"
JFT = "needs JFT-300M pretraining (Google-internal)"

#: modified aligned Xception-65, no multi-grid (paper §4.3). Rows 17–24 start from COCO or JFT pretraining,
#: not available here: the plans list them, the runner skips them and says so.
TABLE5 = Table(
    name="table5_xception",
    title="Table 5: Xception-65 inference strategy (VOC 2012 val)",
    config="experiments/configs/xception65_os16.yaml",
    rows=[
        #           train eval decoder MS    flip   mIoU   MAdds (B) separable
        protocol_row(16, 16, False, False, False, 79.17, 68.00, False),
        protocol_row(16, 16, False, True, False, 80.57, 601.74, False),
        protocol_row(16, 16, False, True, True, 80.79, 1203.34, False),
        protocol_row(16, 8, False, False, False, 79.64, 240.85, False),
        protocol_row(16, 8, False, True, False, 81.15, 2149.91, False),
        protocol_row(16, 8, False, True, True, 81.34, 4299.68, False),
        protocol_row(16, 16, True, False, False, 79.93, 89.76, False),
        protocol_row(16, 16, True, True, False, 81.38, 790.12, False),
        protocol_row(16, 16, True, True, True, 81.44, 1580.10, False),
        protocol_row(16, 8, True, False, False, 80.22, 262.59, False),
        protocol_row(16, 8, True, True, False, 81.60, 2338.15, False),
        protocol_row(16, 8, True, True, True, 81.63, 4676.16, False),
        protocol_row(16, 16, True, False, False, 79.79, 54.17, True),
        protocol_row(16, 16, True, True, True, 81.21, 928.81, True),
        protocol_row(16, 8, True, False, False, 80.02, 177.10, True),
        protocol_row(16, 8, True, True, True, 81.39, 3055.35, True),
        *(protocol_row(16, eval_os, True, mf, mf, miou, madds, True, reproducible=False, note=note, suffix=suffix)
          for suffix, note, results in (("-coco", COCO, ((16, False, 82.20, 54.17), (16, True, 83.34, 928.81),
                                                          (8, False, 82.45, 177.10), (8, True, 83.58, 3055.35))),
                                        ("-coco-jft", JFT, ((16, False, 83.03, 54.17), (16, True, 84.22, 928.81),
                                                             (8, False, 83.39, 177.10), (8, True, 84.56, 3055.35))))
          for eval_os, mf, miou, madds in results),
    ],
)

#: Figure 5(a) (§4.4): mIoU within a trimap band around object boundaries against the band width, at train
#: OS = eval OS = 16, each backbone with and without the decoder. The figure's curves carry no printed
#: values; the text gives only the decoder's gain at the narrowest band (percentage points):
FIGURE5_GAINS = {"resnet101": 4.8, "xception65": 5.4}
#: band widths (pixels) of the figure's x-axis, 0 to 40
FIGURE5_WIDTHS = [2, 5, 10, 15, 20, 25, 30, 35, 40]


def _figure5_row(backbone: str, config: str, decoder: bool) -> Row:
    name = f"{backbone}-{'decoder' if decoder else 'no-decoder'}"
    gain = f"paper: the decoder adds {FIGURE5_GAINS[backbone]} points at the narrowest band" if decoder else ""
    return Row(name, net(output_stride=16, decoder="3x3:256,3x3:256" if decoder else "none"),
               {**evaluation(16), "model.trimap_widths": FIGURE5_WIDTHS}, note=gain, config=config,
               baseline=f"{backbone}-no-decoder", paper_trimap_gain=FIGURE5_GAINS[backbone] if decoder else None)


FIGURE5 = Table(
    name="figure5_trimap",
    title="Figure 5(a): mIoU around object boundaries, with and without the decoder (VOC 2012 val, OS 16)",
    config="experiments/configs/resnet101_os16.yaml",
    rows=[_figure5_row(backbone, config, decoder)
          for backbone, config in (("resnet101", "experiments/configs/resnet101_os16.yaml"),
                                   ("xception65", "experiments/configs/xception65_os16.yaml"))
          for decoder in (False, True)],
)

#: Table 6: VOC 2012 test mIoU (%), from the official evaluation server; models trained at OS 8 with frozen BN,
#: COCO (and JFT) pretrained — `experiments.predict --voc_test` writes the archive the server scores
TABLE6 = {"DeepLabv3+ (Xception)": 87.8, "DeepLabv3+ (Xception-JFT)": 89.0}



def _cityscapes_row(name: str, decoder: bool, image_pooling: bool, miou: float, madds: float | None = None,
                    **settings: Any) -> Row:
    """A Table 7(a) row: ASPP always; what changes is the decoder, the image-level branch and (last row) the
    backbone. Scored as the paper reports it: output stride 16, one scale, no flip, the full image (the
    config's 1025×2049 canvas)."""
    train = net(decoder="3x3:256,3x3:256" if decoder else "none", image_pooling=image_pooling, **settings)
    return Row(name, train, evaluation(16), miou, madds)


#: Cityscapes val after train_fine (crop 769, 90K steps: `cityscapes_xception65_os16.yaml`, the official
#: g3doc/cityscapes.md recipe). The paper prints no Multiply-Adds for this table; row 2 is the official model
#: zoo's xception65_cityscapes_trainfine, whose 418.64B (1025×2049, OS16, one scale) is put beside ours.
#: The Xception-65 rows take the config's backbone (so `--profile smoke` shrinks them to MobileNetV2, as in
#: every table); the last row names its own.
TABLE7 = Table(
    name="table7_cityscapes",
    title="Table 7(a): Cityscapes val, train_fine (Multiply-Adds: the model zoo's xception65_cityscapes_trainfine)",
    config="experiments/configs/cityscapes_xception65_os16.yaml",
    rows=[
        #               name            decoder image-level mIoU  MAdds (B)
        _cityscapes_row("x65-aspp-ip", False, True, 77.33),
        _cityscapes_row("x65-dec-aspp-ip", True, True, 78.79, 418.64),
        _cityscapes_row("x65-dec-aspp", True, False, 79.14),
        _cityscapes_row("x71-dec-aspp", True, False, 79.55, backbone="xception71"),
    ],
    # the generated Cityscapes tree (128×256 images), each scored on its own aligned canvas, in float32
    # (bfloat16 autocast makes Xception's depthwise convolutions very slow on a CPU)
    smoke={"data.root": "data/cityscapes-synthetic", "model.eval_canvas": None, "trainer.precision": "32-true"},
)

TABLES = {table.name: table for table in (TABLE1, TABLE2, TABLE3, TABLE5, TABLE7, FIGURE5)}
