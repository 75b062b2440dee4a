"""At the end of `fit`, `validate` and `test`: what the run reached, on the console and as pictures in its
folder, for users who train offline and never open W&B."""
from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from .plots import plot_confusion_matrix, plot_curves, plot_trimap, trimap_curve
from .record import RunRecord
from .summary import format_table, read_stage

CURVES_FILE = "curves.png"


def trimap_file(stage: str) -> str:
    return f"trimap_{stage}.png"


def confusion_matrix_file(stage: str) -> str:
    return f"confusion_matrix_{stage}.png"


class RunReport(L.Callback):
    """Prints the stage's table (mIoU, pixel accuracy, best checkpoint, images/s, best and worst classes) and
    writes `curves.png` (train loss, val mIoU, LR against step) and `confusion_matrix_<stage>.png`
    (the last evaluation's, row-normalised) into the run folder, and with `model.trimap_widths`
    `trimap_<stage>.png` (mIoU against trimap band width, paper Figure 5(a)), also logged to W&B.

    Everything is read back from the run record (`metrics.jsonl`, `results.json`), which `RunRecord` has
    written by then (it is the first callback): the table is the one `experiments.summary` prints.
    """

    def __init__(self) -> None:
        self._confmat: np.ndarray | None = None

    def _keep_confusion_matrix(self, pl_module: L.LightningModule) -> None:
        # compute() is collective (every process calls it) and cached for the module's own epoch end
        self._confmat = pl_module.metrics.compute().cpu().numpy()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._keep_confusion_matrix(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_confusion_matrix(pl_module)

    @rank_zero_only
    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        record = next((lg for lg in trainer.loggers if isinstance(lg, RunRecord)), None)
        if record is None:  # no run folder (a bare Trainer without the CLI's run record)
            return
        run_dir = record.metrics_path.parent
        summary = read_stage(run_dir, stage)
        pictures = []
        if summary.curves:
            pictures.append(plot_curves([summary], [str(run_dir)], run_dir / CURVES_FILE))
        if self._confmat is not None:
            pictures.append(plot_confusion_matrix(self._confmat, list(pl_module.labels.class_names),
                                                  run_dir / confusion_matrix_file(stage),
                                                  f"{summary.prefix} confusion matrix, step {trainer.global_step} "
                                                  "(rows sum to 1)"))
        trimap = trimap_curve(summary.metrics, summary.prefix)
        if trimap:
            path = plot_trimap({f"step {summary.step}": trimap}, run_dir / trimap_file(stage),
                               f"{summary.prefix} mIoU within w pixels of a label change")
            pictures.append(path)
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):  # W&B: the curve as a picture beside the run's charts
                    logger.log_image(f"{summary.prefix}/trimap_mIoU_curve", [str(path)], step=trainer.global_step)
        print(f"\n{format_table([summary])}")
        if pictures:
            print("pictures: " + ", ".join(str(p) for p in pictures))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")
