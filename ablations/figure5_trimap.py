"""Paper Figure 5(a): mIoU within a trimap band around object boundaries against the band width — ResNet-101 and
Xception-65, each with and without the decoder, train OS = eval OS = 16, the same seeds for all four rows. The
report puts the decoder's gain at the narrowest band (with its 95% interval over seeds) beside the paper's
+4.8 and +5.4, the only numbers the figure has. Rows and numbers live in `experiments/paper.py`."""
import sys

from ablations.runner import main
from experiments.paper import FIGURE5 as TABLE

if __name__ == "__main__":
    sys.exit(main(TABLE))
