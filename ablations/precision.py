"""bf16 autocast + channels_last (every config's default, about 2× faster) against the paper's fp32
NCHW, on the quickstart (MobileNetV2 from scratch on the generated VOC-format data, 300 steps): the same
mIoU within seed noise is what lets the fast default stand in for the paper's precision (it did over 6
seeds; 3 were too few: seed noise is 6-8 points); the `bf16` row (NCHW) tells bf16 from channels_last
apart. Results: docs/speed.md "bf16 against fp32".

    # 12 trainings, ~75 min on 2 CPU cores
    python -m ablations.precision --seeds 0,1,2,3,4,5 --rows bf16-channels_last,fp32

Not a paper table: the rows are settings of `experiments/configs/quickstart.yaml`, run as it is.
"""
import sys

from ablations.runner import main
from experiments.paper import Row, Table

TABLE = Table("precision", "Precision: bf16 autocast + channels_last vs fp32 (quickstart)",
              "experiments/configs/quickstart.yaml", [
                  Row("bf16-channels_last", {"trainer.precision": "bf16-mixed", "model.channels_last": True}),
                  Row("bf16", {"trainer.precision": "bf16-mixed", "model.channels_last": False}),
                  Row("fp32", {"trainer.precision": "32-true", "model.channels_last": False}),
              ])

if __name__ == "__main__":
    sys.exit(main(TABLE))
