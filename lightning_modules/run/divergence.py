"""A diverging run stops: a non-finite loss, gradient or weight ends training before it reaches a checkpoint."""
from __future__ import annotations

import lightning as L
import torch
from torch.optim import Optimizer


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; the message names the step and likely causes."""


def _not_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor, True if any element of `tensors` is NaN or ±inf (no host synchronisation: the max norm
    cannot overflow the way a 2-norm of large but finite values can)."""
    if not tensors:
        return torch.tensor(False)
    return ~torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=float("inf")))


class Divergence(L.Callback):
    """Stops the run at the first step whose loss is not finite, before its optimizer step writes NaN into the
    weights, and refuses to write a checkpoint holding a non-finite weight: `last.ckpt` and the best checkpoint
    keep the last finite state, and `--ckpt_path last` resumes from it.

    Non-finite gradients with a finite loss stop the run at once too, except under a gradient scaler
    (`16-mixed`): it skips such steps and lowers its scale, which is normal for a few steps in a row; `patience`
    consecutive skipped steps stop the run. (EarlyStopping's `check_finite` looks at a logged metric after the
    optimizer step, too late to keep the weights finite.)

    One flag per step is read on the host (a single reduction across processes under DDP, so every process
    stops at the same step).
    """

    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self.loss_bad: torch.Tensor | None = None
        self.skipped = 0

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.loss_bad = bad if self.loss_bad is None else self.loss_bad | bad  # gradient accumulation

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_bad = _not_finite(grads).to(pl_module.device)
        loss_bad = self.loss_bad.to(pl_module.device) if self.loss_bad is not None else torch.zeros_like(grad_bad)
        self.loss_bad = None
        flags = trainer.strategy.reduce(torch.stack([loss_bad, grad_bad]).float(), reduce_op="sum")
        loss_bad, grad_bad = (bool(f > 0) for f in flags.tolist())
        if loss_bad:
            raise DivergenceError(self._message(trainer, pl_module, "the loss is not finite"))
        if not grad_bad:
            self.skipped = 0
            return
        self.skipped += 1
        if not _gradient_scaler(trainer) or self.skipped > self.patience:
            what = "the gradients are not finite" + (f" for {self.skipped} steps" if self.skipped > 1 else "")
            raise DivergenceError(self._message(trainer, pl_module, what))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # called before the file is written: the earlier, finite checkpoint stays in place
        bad = _not_finite([p.detach() for p in pl_module.parameters()]).to(pl_module.device)
        if trainer.strategy.reduce(bad.float(), reduce_op="sum").item() > 0:
            raise DivergenceError(self._message(trainer, pl_module, "the weights are not finite", saved=False))

    @staticmethod
    def _message(trainer: L.Trainer, pl_module: L.LightningModule, what: str, saved: bool = True) -> str:
        step = trainer.global_step
        lr = getattr(pl_module.hparams, "lr", None)
        return (f"training diverged at step {step}: {what}; "
                f"{'no checkpoint was written from this step on' if saved else 'this checkpoint was not written'}. "
                f"Likely causes: the learning rate (--model.lr {lr} too high), the precision "
                f"(--trainer.precision {trainer.precision}: try 32-true), or the data (labels, a batch with no "
                "labelled pixel). Resume from the last finite checkpoint with --ckpt_path last "
                "(with --resume_changes apply to change the learning rate)")


def _gradient_scaler(trainer: L.Trainer) -> bool:
    """True where a gradient scaler skips steps with non-finite gradients (`16-mixed`)."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None
