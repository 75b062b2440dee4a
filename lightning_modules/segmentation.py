"""Training and evaluation of a DeepLabV3+ network the paper's way."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import PolynomialLR
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics.aggregation import MeanMetric

from datamodules.dataset import sample_seed
from datamodules.reading import LabelSpace
from datamodules.transforms import NORMALIZATIONS

from .components import DeepLabV3Plus
from .components.layers import BATCHNORMS
from .components.protocol import PAPER_CROP, protocol_from
from .components.inference import DEFAULT_TILE_OVERLAP, Tiling, labels_from, pixel_nll, predict_probabilities, \
    tiled_probabilities
from .class_balance import median_frequency
from .losses import segmentation_loss
from .metrics import SegmentationMetrics, TrimapMetrics
from .pretrained import load_network_weights


def decayed_parameters(net: nn.Module, which: str) -> set[int]:
    """ids of the parameters that get weight decay. "conv_weights" is the official choice: TF-slim puts
    an L2 regulariser on conv and fully-connected weights only — not on BN γ/β, biases, or depthwise
    weights (`regularize_depthwise=False` in Xception; no regulariser on ASPP/decoder depthwise convs)."""
    if which == "all":
        return {id(p) for p in net.parameters()}
    if which != "conv_weights":
        raise ValueError(f"model.weight_decay_params must be 'conv_weights' or 'all', got {which!r}")
    return {id(m.weight) for m in net.modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and not _is_depthwise(m))}


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


class SegmentationModule(L.LightningModule):
    """Cross-entropy on logits at label size, SGD + poly LR per iteration, paper-protocol evaluation.

    Args:
        net: the network; its `output_stride` is the training output stride.
        lr: base learning rate (paper: 0.007 at global batch 16; scale it yourself for other batches).
        momentum, weight_decay: SGD settings (official code: 0.9; 1e-4 for ResNet, 4e-5 for Xception and
            MobileNetV2).
        weight_decay_params: "conv_weights" (official): decay on the weights of dense convolutions and
            linear layers only — not on BN γ/β, biases, or depthwise convolutions (TF-slim regularises
            none of those: `regularize_depthwise=False`); "all": every parameter.
        poly_power: poly policy power, lr · (1 − step / max_steps)^power, stepped every iteration.
        bias_lr_multiplier: learning-rate factor for biases (only the classifier has one): 2 in the official
            `get_model_gradient_multipliers`.
        bn_momentum: BatchNorm momentum of the ASPP and decoder; 0.0003 is TF's decay 0.9997. None keeps
            PyTorch's 0.1.
        backbone_bn_momentum: BatchNorm momentum of the backbone; "official" is the official code's
            value for that backbone (ResNet 0.05 = decay 0.95, Xception 0.0003, MobileNetV2 0.003);
            None keeps PyTorch's 0.1.
        freeze_bn: BN statistics stay fixed (eval-mode BN) while γ/β keep training — the official
            `fine_tune_batch_norm=False` of the paper's OS8 second stage.
        freeze_bn_affine: with `freeze_bn`, freeze γ/β too.
        eval_output_stride, eval_scales, eval_flip, eval_canvas: the evaluation protocol
            (`components.protocol.EvalProtocol`): output stride (None = the training one), multi-scale
            inputs (0.5…1.75), left-right flips, and the aligned canvas images are pasted into (513×513
            for VOC, the official `eval_crop_size`; None = the smallest aligned size per image).
        eval_tile, eval_tile_size, eval_tile_overlap: sliding-window evaluation (a deviation, off by default:
            the official code runs whole images): an image larger than one window of `eval_tile_size` pixels
            (None = the training crop, `data.crop_size`) is scored window by window, windows overlapping by
            `eval_tile_overlap` of their size (1/3: mmsegmentation's stride of 2/3 of the crop), class
            probabilities averaged where they overlap. An image that fits one window is scored as without it.
        top_k_percent_pixels: hard-pixel mining (official flag of the same name; 1 = off): the loss averages
            the hardest fraction of the pixels (`lightning_modules.losses.segmentation_loss`).
        hard_example_mining_step: the official ramp: the kept fraction goes linearly from 1 at step 0 to
            `top_k_percent_pixels` at this step (0 = no ramp).
        label_weights: per-class loss weights (official `label_weights`), a list of `num_classes` numbers,
            or "median_frequency": computed once from the training split's masks and cached beside the data.
            None = every class weighs 1.
        channels_last: NHWC memory format (with bf16 this about doubles speed on GPUs and AMX CPUs).
        compile: `torch.compile` the network in place (`nn.Module.compile`): state-dict keys stay the same,
            so checkpoints load with or without it; `set_output_stride` changes guarded attributes, so an
            evaluation at another output stride recompiles instead of running stale code.
        trimap_widths: band widths (pixels) of the trimap mIoU, `{stage}/trimap_mIoU/<w>`: mIoU counted only
            within w pixels of a label change (paper §4.4, Figure 5; `metrics.trimap_bands`); empty = off.
        init_from: fine-tune: a checkpoint (or saved state dict) whose network weights initialise `net` —
            no optimizer, step or loop state; tensors whose shape differs (another dataset's classifier)
            keep their fresh initialisation, and one log line names them.

    Class names, palette and ignore index come from the datamodule (`labels`) at setup and are saved
    in the checkpoint with the network's constructor arguments (`lightning_modules.pretrained.load_model`).
    """

    def __init__(
        self,
        net: DeepLabV3Plus,
        lr: float = 0.007,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        weight_decay_params: Literal["conv_weights", "all"] = "conv_weights",
        bias_lr_multiplier: float = 2.0,
        poly_power: float = 0.9,
        bn_momentum: float | None = 0.0003,
        backbone_bn_momentum: float | Literal["official"] | None = "official",
        freeze_bn: bool = False,
        freeze_bn_affine: bool = False,
        eval_output_stride: int | None = None,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        eval_canvas: int | tuple[int, int] | None = (PAPER_CROP, PAPER_CROP),
        eval_tile: bool = False,
        eval_tile_size: int | None = None,
        eval_tile_overlap: float = DEFAULT_TILE_OVERLAP,
        top_k_percent_pixels: float = 1.0,
        hard_example_mining_step: int = 0,
        label_weights: list[float] | Literal["median_frequency"] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        init_from: str | None = None,
        trimap_widths: Sequence[int] = (),
    ) -> None:
        super().__init__()
        # The evaluation protocol is not a training hyperparameter: left out of the checkpoint, so that
        # `validate --ckpt_path ... --model.eval_scales ...` is not overridden by the checkpoint's values.
        self.save_hyperparameters(ignore=["net", "eval_output_stride", "eval_scales", "eval_flip", "eval_canvas",
                                          "eval_tile", "eval_tile_size", "eval_tile_overlap", "trimap_widths"])
        self.net = net
        self.train_output_stride = net.output_stride
        self.eval_protocol = protocol_from(eval_output_stride, eval_scales, eval_flip, eval_canvas).resolve(
            net.output_stride)
        self.eval_tile, self.eval_tile_size, self.eval_tile_overlap = eval_tile, eval_tile_size, eval_tile_overlap
        self.eval_tiling: Tiling | None = None  # resolved at setup, where the training crop is known
        # the loss's class weights: given, or counted from the training split at setup (median_frequency)
        self.label_weight_values: torch.Tensor | None = None
        if label_weights is not None and label_weights != "median_frequency":
            self.label_weight_values = torch.tensor([float(w) for w in label_weights])
        if backbone_bn_momentum == "official":
            backbone_bn_momentum = net.backbone.official_bn_momentum
        backbone_bns = {id(m) for m in net.backbone.modules()}
        for m in self._batchnorms():
            bn_value = backbone_bn_momentum if id(m) in backbone_bns else bn_momentum
            if bn_value is not None:
                m.momentum = bn_value
            if freeze_bn and freeze_bn_affine:
                m.requires_grad_(False)
        if init_from:
            load_network_weights(self.net, init_from)
        num_classes = self.net.classifier.out_channels
        self.labels = LabelSpace(tuple(f"class_{i}" for i in range(num_classes)))
        self.metrics = SegmentationMetrics(num_classes, self.labels.ignore_index)
        self.trimap = TrimapMetrics(trimap_widths, num_classes, self.labels.ignore_index)
        # `{stage}/loss`: mean over every labelled pixel of the evaluation set, reduced across processes once
        # at the end (a `self.log` per step would reduce every step); inputs are finite (no NaN check: a sync)
        self.eval_loss = MeanMetric(nan_strategy="disable")
        # uint8 images are normalised on the device with the backbone's mean/std (not in the checkpoint)
        mean, std = NORMALIZATIONS[net.normalization]
        self.register_buffer("pixel_mean", 255 * torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255 * torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _batchnorms(self) -> list[nn.Module]:
        return [m for m in self.net.modules() if isinstance(m, BATCHNORMS)]

    def train(self, mode: bool = True) -> "SegmentationModule":
        super().train(mode)
        if mode and self.hparams.freeze_bn:
            for m in self._batchnorms():
                m.eval()
        return self

    # -- data and memory format -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        labels = getattr(datamodule, "labels", None)
        if labels is not None:
            if labels.num_classes != self.labels.num_classes:
                raise ValueError(f"the datamodule has {labels.num_classes} classes but the network predicts "
                                 f"{self.labels.num_classes}: set model.net.init_args.num_classes to "
                                 f"{labels.num_classes} (experiments.train links them)")
            self.labels = labels
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.eval_tile:
            crop = getattr(getattr(datamodule, "hparams", None), "crop_size", None) if datamodule else None
            self.eval_tiling = Tiling(self.eval_tile_size or crop or PAPER_CROP, self.eval_tile_overlap)
        if stage == "fit" and self.hparams.label_weights == "median_frequency" and self.label_weight_values is None:
            weights = median_frequency(datamodule)
            self.label_weight_values = torch.tensor(weights)
            rank_zero_info("label_weights (median_frequency): " + ", ".join(
                f"{name} {w:.3g}" for name, w in zip(self.labels.class_names, weights)))
            for logger in self.loggers:
                logger.log_hyperparams({"label_weights_median_frequency": dict(zip(self.labels.class_names, weights))})
        tiling = {"eval_tile": self.eval_tile, "eval_tile_size": self.eval_tiling.size if self.eval_tiling else None,
                  "eval_tile_overlap": self.eval_tile_overlap}
        for logger in self.loggers:
            logger.log_hyperparams({"eval_protocol": {**self.eval_protocol.as_dict(), **tiling}})
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        wanted = getattr(datamodule, "normalization", None)
        if self.net.config.get("weights") and wanted is not None and wanted != self.net.normalization:
            raise ValueError(
                f"data.normalization={wanted!r} but the {self.net.config['backbone']} weights expect "
                f"{self.net.normalization!r}: set data.normalization to {self.net.normalization!r}"
            )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 images arrive on the device (a quarter of the bytes of float32) and are normalised here, in
        the memory format the network runs in; float images are taken as already normalised."""
        images, masks = batch
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if images.dtype == torch.uint8:
            images = (images.float() - self.pixel_mean) / self.pixel_std
        return images, masks.long()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what `load_model` needs to rebuild the network and name its outputs without this class or a trainer
        checkpoint["net_config"] = {**self.net.config, "weights": None}
        checkpoint["labels"] = self.labels.as_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "labels" in checkpoint:
            self.labels = LabelSpace(**checkpoint["labels"])
        if self._fitting():
            self._apply_schedule_changes(checkpoint)

    def _fitting(self) -> bool:
        try:
            return self.trainer.state.fn == "fit"
        except RuntimeError:  # not attached to a trainer (load_from_checkpoint)
            return False

    # -- training -----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.net.set_output_stride(self.train_output_stride)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Random draws in the step (dropout) depend only on (seed, rank, step): a resumed run draws the
        # same numbers, and each DDP process its own.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed(sample_seed(seed, -2 - self.global_rank, self.global_step))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        logits = self.net(images)
        hp = self.hparams
        weights = None if self.label_weight_values is None else self.label_weight_values.to(logits.device)
        loss = segmentation_loss(logits, masks, self.labels.ignore_index, weights, hp.top_k_percent_pixels,
                                 hp.hard_example_mining_step, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _group_settings(self) -> dict[str, dict[str, float]]:
        """Learning rate and weight decay of each parameter group (official multipliers and regularisers)."""
        hp = self.hparams
        return {
            "decay": {"lr": hp.lr, "weight_decay": hp.weight_decay},
            "no_decay": {"lr": hp.lr, "weight_decay": 0.0},
            "bias": {"lr": hp.lr * hp.bias_lr_multiplier,
                     "weight_decay": hp.weight_decay if hp.weight_decay_params == "all" else 0.0},
        }

    def _schedule_length(self) -> int:
        return self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        hp = self.hparams
        decay = decayed_parameters(self.net, hp.weight_decay_params)
        biases = {id(m.bias) for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None}
        groups: dict[str, dict] = {name: {"params": [], **settings} for name, settings in self._group_settings().items()}
        for p in self.net.parameters():
            if p.requires_grad:
                groups["bias" if id(p) in biases else "decay" if id(p) in decay else "no_decay"]["params"].append(p)
        optimizer = torch.optim.SGD([{"name": name, **group} for name, group in groups.items() if group["params"]],
                                    lr=hp.lr, momentum=hp.momentum, foreach=True)
        scheduler = PolynomialLR(optimizer, total_iters=self._schedule_length(), power=hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _apply_schedule_changes(self, checkpoint: dict) -> None:
        """A resume whose learning rate, momentum, weight decay, poly power or `max_steps` differ from the
        checkpoint's (allowed by `--resume_changes apply`) uses the new values: Lightning would otherwise
        restore the checkpoint's optimizer and scheduler state over them. From the checkpoint's step t0 on, the
        LR follows the curve the new config describes, lr(t) = lr_new · (1 − t/T_new)^power (docs/resuming.md):
        "train longer" continues at lr·(1 − t0/T_new)^power instead of 0. Unchanged settings change nothing
        (the restored state resumes exactly)."""
        optimizers, schedulers = checkpoint.get("optimizer_states"), checkpoint.get("lr_schedulers")
        if not optimizers or not schedulers or len(optimizers) != 1:
            return
        groups, state, wanted = optimizers[0]["param_groups"], schedulers[0], self._group_settings()
        if not all(g.get("name") in wanted for g in groups) or "total_iters" not in state:
            return  # not this module's optimizer
        hp, total = self.hparams, self._schedule_length()
        changed = state["total_iters"] != total or state.get("power") != hp.poly_power or any(
            g["initial_lr"] != wanted[g["name"]]["lr"] or g["weight_decay"] != wanted[g["name"]]["weight_decay"]
            or g["momentum"] != hp.momentum for g in groups)
        if not changed:
            return
        factor = (1.0 - min(state["last_epoch"], total) / total) ** hp.poly_power
        for g in groups:
            g.update(initial_lr=wanted[g["name"]]["lr"], lr=wanted[g["name"]]["lr"] * factor,
                     weight_decay=wanted[g["name"]]["weight_decay"], momentum=hp.momentum)
        state.update(total_iters=total, power=hp.poly_power, base_lrs=[g["initial_lr"] for g in groups],
                     _last_lr=[g["lr"] for g in groups])

    # -- evaluation (validate, test and evaluation from a checkpoint share this path) ----------------
    def _eval_epoch_start(self) -> None:
        self.net.set_output_stride(self.eval_protocol.output_stride)
        self.metrics.reset()
        self.trimap.reset()
        self.eval_loss.reset()

    def _eval_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, masks = batch
        probs = (predict_probabilities(self.net, images, self.eval_protocol) if self.eval_tiling is None else
                 tiled_probabilities(self.net, images, self.eval_protocol, self.eval_tiling))
        self.eval_loss.update(*pixel_nll(probs, masks, self.labels.ignore_index))
        preds = labels_from(probs)
        self.metrics.update(preds, masks)
        self.trimap.update(preds, masks)
        return {"preds": preds}

    def _eval_epoch_end(self, stage: str) -> None:
        confmat = self.metrics.compute()
        scores = SegmentationMetrics.scores(confmat)
        loss, accuracy = self.eval_loss.compute(), scores["pixel_accuracy"].float()
        if not confmat.sum():  # the preflight refuses such a split; a subset (limit_val_batches) can still be one
            rank_zero_warn(f"{stage}: no labelled pixel in the {stage} images scored: mIoU, pixel accuracy and "
                           "loss are undefined (logged as NaN, not 0)")
            loss, accuracy = torch.full_like(loss, float("nan")), torch.full_like(accuracy, float("nan"))
        elif not torch.isfinite(loss):  # said, not hidden: the network's outputs are NaN or inf
            rank_zero_warn(f"{stage}/loss is {loss.item()}: the network's outputs are not finite (diverged "
                           "weights?); its scores mean nothing")
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/mIoU", scores["mIoU"].float())
        self.log(f"{stage}/pixel_accuracy", accuracy)
        for width, band in self.trimap.compute().items():
            self.log(f"{stage}/trimap_mIoU/{width}", TrimapMetrics.miou(band, confmat).float())
        for name, iou in zip(self.labels.class_names, scores["iou"]):
            if not torch.isnan(iou):
                self.log(f"{stage}/iou/{name}", iou.float())
        self.net.set_output_stride(self.train_output_stride)

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start()

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start()

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- prediction (`experiments.predict` runs the same `predict_probabilities` without a trainer) ----
    def on_predict_epoch_start(self) -> None:
        self.net.set_output_stride(self.eval_protocol.output_stride)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """N×H×W class indices of a batch of normalised images (or (images, masks) pairs)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = (predict_probabilities(self.net, images, self.eval_protocol) if self.eval_tiling is None else
                 tiled_probabilities(self.net, images, self.eval_protocol, self.eval_tiling))
        return labels_from(probs)
