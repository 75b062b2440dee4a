"""Paper Table 1: decoder 1×1 projection channels for the low-level feature (ResNet-101, [3×3, 256], Conv2)."""
import sys

from ablations.runner import Row, Table, main, net

TABLE = Table(
    name="table1_decoder_channels",
    title="Table 1: decoder 1×1 channels (ResNet-101, VOC 2012 val)",
    config="experiments/configs/resnet101_os16.yaml",
    rows=[Row(f"proj{c}", net(decoder="3x3:256", decoder_projection=c), paper_miou=miou)
          for c, miou in ((8, 77.61), (16, 77.92), (32, 78.16), (48, 78.21), (64, 77.94))],
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
