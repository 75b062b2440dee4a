"""Paper Table 2: decoder 3×3 structure after concatenation (projection [1×1, 48], ResNet-101)."""
import sys

from ablations.runner import Row, Table, main, net

TABLE = Table(
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

if __name__ == "__main__":
    sys.exit(main(TABLE))
