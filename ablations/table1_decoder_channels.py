"""Paper Table 1: decoder 1×1 projection channels for the low-level feature (ResNet-101, [3×3, 256], Conv2).
The rows (settings and the paper's numbers) live in `experiments/paper.py`."""
import sys

from ablations.runner import main
from experiments.paper import TABLE1 as TABLE

if __name__ == "__main__":
    sys.exit(main(TABLE))
