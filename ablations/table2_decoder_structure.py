"""Paper Table 2: decoder 3×3 structure after concatenation (projection [1×1, 48], ResNet-101).
The rows (settings and the paper's numbers) live in `experiments/paper.py`."""
import sys

from ablations.runner import main
from experiments.paper import TABLE2 as TABLE

if __name__ == "__main__":
    sys.exit(main(TABLE))
