"""mIoU the VOC way: one confusion matrix accumulated over the whole val set, then IoU per class."""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(MulticlassConfusionMatrix):
    """A torchmetrics confusion matrix (synced across processes at `compute`) with the derived scores.

    IoU of a class is TP / (TP + FP + FN); mIoU averages the classes that occur in the ground truth or
    the predictions (on VOC val all 21 do; small generated sets may lack some). Arguments are not
    validated per update (`validate_args=False`): the check is a `unique` over every pixel and a host
    synchronisation per step, and labels are checked where masks are decoded (`datamodules.reading`).
    """

    def __init__(self, num_classes: int = 21, ignore_index: int = 255) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)

    @staticmethod
    def scores(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
        cm = confmat.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return {
            "iou": iou,
            "mIoU": iou.nanmean(),
            "pixel_accuracy": tp.sum() / cm.sum().clamp(min=1),
        }
