"""bf16 autocast + channels_last (every config's default, about 2× faster) against the paper's fp32
NCHW, on the quickstart (MobileNetV2 from scratch on the generated VOC-format data, 300 steps): the same
mIoU within seed noise is what lets the fast default stand in for the paper's precision (README "Fidelity").

    python -m ablations.precision --seeds 0,1,2        # 6 quickstart trainings, ~30 min on 2 CPU cores

Not a paper table: the rows are two settings of `experiments/configs/quickstart.yaml`, run as it is.
"""
import sys

from ablations.runner import main
from experiments.paper import Row, Table

TABLE = Table("precision", "Precision: bf16 autocast + channels_last vs fp32 (quickstart)",
              "experiments/configs/quickstart.yaml", [
                  Row("bf16-channels_last", {"trainer.precision": "bf16-mixed", "model.channels_last": True}),
                  Row("fp32", {"trainer.precision": "32-true", "model.channels_last": False}),
              ])

if __name__ == "__main__":
    sys.exit(main(TABLE))
