"""The progress bar of a step-budgeted run."""
from __future__ import annotations

import datetime
import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar (per epoch) plus what a step-budgeted run needs: the global step out of
    `max_steps` and the time left for the whole run.

    It refreshes every `trainer.log_every_n_steps` steps unless `refresh_rate` says otherwise: each refresh
    reads the logged loss, which on a GPU waits for the device, so a refresh every step would stop the
    host from running ahead (Lightning's default of 1 cost a synchronisation per step).
    """

    def __init__(self, refresh_rate: int | None = None, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(1 if refresh_rate is None else refresh_rate, process_position, leave)
        self.every = refresh_rate

    @property
    def refresh_rate(self) -> int:
        if self.every is not None:
            return self.every
        try:
            return max(1, self.trainer.log_every_n_steps)
        except TypeError:  # not attached to a trainer yet
            return 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.training and trainer.max_steps > 0:
            items["step"] = f"{trainer.global_step}/{trainer.max_steps}"
            done = trainer.global_step - getattr(self, "_step0", trainer.global_step)
            if done > 0:
                left = (time.perf_counter() - self._t0) / done * (trainer.max_steps - trainer.global_step)
                items["eta"] = str(datetime.timedelta(seconds=int(left)))
        return items
