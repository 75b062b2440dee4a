"""Training and evaluation of a DeepLabV3+ network the paper's way."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import PolynomialLR
from torchmetrics.aggregation import MeanMetric

from datamodules.dataset import sample_seed
from datamodules.reading import LabelSpace
from datamodules.transforms import NORMALIZATIONS

from .components import DeepLabV3Plus
from .components.layers import BATCHNORMS
from .components.protocol import PAPER_CROP, protocol_from
from .components.inference import labels_from, pixel_nll, predict_probabilities
from .metrics import SegmentationMetrics
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
        channels_last: NHWC memory format (with bf16 this about doubles speed on GPUs and AMX CPUs).
        compile: `torch.compile` the network in place (`nn.Module.compile`): state-dict keys stay the same,
            so checkpoints load with or without it; `set_output_stride` changes guarded attributes, so an
            evaluation at another output stride recompiles instead of running stale code.
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
        channels_last: bool = False,
        compile: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        # The evaluation protocol is not a training hyperparameter: left out of the checkpoint, so that
        # `validate --ckpt_path ... --model.eval_scales ...` is not overridden by the checkpoint's values.
        self.save_hyperparameters(ignore=["net", "eval_output_stride", "eval_scales", "eval_flip", "eval_canvas"])
        self.net = net
        self.train_output_stride = net.output_stride
        self.eval_protocol = protocol_from(eval_output_stride, eval_scales, eval_flip, eval_canvas).resolve(
            net.output_stride)
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
        labels = getattr(getattr(self.trainer, "datamodule", None), "labels", None)
        if labels is not None:
            if labels.num_classes != self.labels.num_classes:
                raise ValueError(f"the datamodule has {labels.num_classes} classes but the network predicts "
                                 f"{self.labels.num_classes}: set model.net.init_args.num_classes to "
                                 f"{labels.num_classes} (experiments.train links them)")
            self.labels = labels
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        for logger in self.loggers:
            logger.log_hyperparams({"eval_protocol": self.eval_protocol.as_dict()})
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
        loss = F.cross_entropy(logits.float(), masks, ignore_index=self.labels.ignore_index)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        decay = decayed_parameters(self.net, hp.weight_decay_params)
        biases = {id(m.bias) for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None}
        groups: dict[str, dict] = {
            "decay": {"params": [], "weight_decay": hp.weight_decay, "lr": hp.lr},
            "no_decay": {"params": [], "weight_decay": 0.0, "lr": hp.lr},
            "bias": {"params": [], "weight_decay": hp.weight_decay if hp.weight_decay_params == "all" else 0.0,
                     "lr": hp.lr * hp.bias_lr_multiplier},
        }
        for p in self.net.parameters():
            if p.requires_grad:
                groups["bias" if id(p) in biases else "decay" if id(p) in decay else "no_decay"]["params"].append(p)
        optimizer = torch.optim.SGD([{"name": name, **group} for name, group in groups.items() if group["params"]],
                                    lr=hp.lr, momentum=hp.momentum, foreach=True)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        scheduler = PolynomialLR(optimizer, total_iters=total, power=hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation (validate, test and evaluation from a checkpoint share this path) ----------------
    def _eval_epoch_start(self) -> None:
        self.net.set_output_stride(self.eval_protocol.output_stride)
        self.metrics.reset()
        self.eval_loss.reset()

    def _eval_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, masks = batch
        probs = predict_probabilities(self.net, images, self.eval_protocol)
        self.eval_loss.update(*pixel_nll(probs, masks, self.labels.ignore_index))
        preds = labels_from(probs)
        self.metrics.update(preds, masks)
        return {"preds": preds}

    def _eval_epoch_end(self, stage: str) -> None:
        confmat = self.metrics.compute()
        scores = SegmentationMetrics.scores(confmat)
        self.log(f"{stage}/loss", self.eval_loss.compute())
        self.log(f"{stage}/mIoU", scores["mIoU"].float())
        self.log(f"{stage}/pixel_accuracy", scores["pixel_accuracy"].float())
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
        return labels_from(predict_probabilities(self.net, images, self.eval_protocol))
