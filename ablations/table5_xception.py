"""Paper Table 5: Xception-65 inference strategy; rows 17–24 need COCO/JFT pretraining and are listed, not run.
The rows (settings and the paper's numbers) live in `experiments/paper.py`."""
import sys

from ablations.runner import main
from experiments.paper import TABLE5 as TABLE

if __name__ == "__main__":
    sys.exit(main(TABLE))
