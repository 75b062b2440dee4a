"""Paper Table 5: modified aligned Xception-65 inference strategy. Rows 17–24 start from COCO or JFT
pretraining, which is not available here: the plan lists them, the runner skips them and says so."""
import sys

from ablations.runner import Table, main, protocol_row as row

COCO = "needs an MS-COCO-pretrained checkpoint (not public in PyTorch form)"
JFT = "needs JFT-300M pretraining (Google-internal)"

TABLE = Table(
    name="table5_xception",
    title="Table 5: Xception-65 inference strategy (VOC 2012 val)",
    config="experiments/configs/xception65_os16.yaml",
    rows=[
        #   train eval decoder MS    flip   mIoU   MAdds (B) separable
        row(16, 16, False, False, False, 79.17, 68.00, False),
        row(16, 16, False, True, False, 80.57, 601.74, False),
        row(16, 16, False, True, True, 80.79, 1203.34, False),
        row(16, 8, False, False, False, 79.64, 240.85, False),
        row(16, 8, False, True, False, 81.15, 2149.91, False),
        row(16, 8, False, True, True, 81.34, 4299.68, False),
        row(16, 16, True, False, False, 79.93, 89.76, False),
        row(16, 16, True, True, False, 81.38, 790.12, False),
        row(16, 16, True, True, True, 81.44, 1580.10, False),
        row(16, 8, True, False, False, 80.22, 262.59, False),
        row(16, 8, True, True, False, 81.60, 2338.15, False),
        row(16, 8, True, True, True, 81.63, 4676.16, False),
        row(16, 16, True, False, False, 79.79, 54.17, True),
        row(16, 16, True, True, True, 81.21, 928.81, True),
        row(16, 8, True, False, False, 80.02, 177.10, True),
        row(16, 8, True, True, True, 81.39, 3055.35, True),
        *(row(16, eval_os, True, mf, mf, miou, madds, True, reproducible=False, note=note, suffix=suffix)
          for suffix, note, results in (("-coco", COCO, ((16, False, 82.20, 54.17), (16, True, 83.34, 928.81),
                                                  (8, False, 82.45, 177.10), (8, True, 83.58, 3055.35))),
                                ("-coco-jft", JFT, ((16, False, 83.03, 54.17), (16, True, 84.22, 928.81),
                                                     (8, False, 83.39, 177.10), (8, True, 84.56, 3055.35))))
          for eval_os, mf, miou, madds in results),
    ],
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
