"""Paper Table 3: ResNet-101 inference strategy — 4 trainings (train output stride × decoder), 14 evaluations.
Rows 1–4 are DeepLabv3's (no decoder); row 3 is 79.45% (spec §3 note)."""
import sys

from ablations.runner import Table, main, protocol_row as row

TABLE = Table(
    name="table3_output_stride",
    title="Table 3: ResNet-101 train/eval output stride, decoder, multi-scale and flip (VOC 2012 val)",
    config="experiments/configs/resnet101_os16.yaml",
    rows=[
        #   train eval decoder MS    flip   mIoU   Multiply-Adds (B)
        row(16, 16, False, False, False, 77.21, 81.02),
        row(16, 8, False, False, False, 78.51, 276.18),
        row(16, 8, False, True, False, 79.45, 2435.37),
        row(16, 8, False, True, True, 79.77, 4870.59),
        row(16, 16, True, False, False, 78.85, 101.28),
        row(16, 16, True, True, False, 80.09, 898.69),
        row(16, 16, True, True, True, 80.22, 1797.23),
        row(16, 8, True, False, False, 79.35, 297.92),
        row(16, 8, True, True, False, 80.43, 2623.61),
        row(16, 8, True, True, True, 80.57, 5247.07),
        row(32, 32, False, False, False, 75.43, 52.43),
        row(32, 32, True, False, False, 77.37, 74.20),
        row(32, 16, True, False, False, 77.80, 101.28),
        row(32, 8, True, False, False, 77.92, 297.92),
    ],
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
