"""Paper Table 7(a): Cityscapes val after train_fine — Xception-65 with and without the decoder and the
image-level branch, and Xception-71. The rows (settings and the paper's numbers) live in `experiments/paper.py`."""
import sys

from ablations.runner import main
from experiments.paper import TABLE7 as TABLE

if __name__ == "__main__":
    sys.exit(main(TABLE))
