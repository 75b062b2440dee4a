"""Paper Table 3: ResNet-101 inference strategy — 4 trainings (train output stride × decoder), 14 evaluations.
The rows (settings and the paper's numbers) live in `experiments/paper.py`."""
import sys

from ablations.runner import main
from experiments.paper import TABLE3 as TABLE

if __name__ == "__main__":
    sys.exit(main(TABLE))
