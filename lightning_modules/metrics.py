"""mIoU the VOC way: one confusion matrix accumulated over the whole val set, then IoU per class."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
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


def trimap_bands(masks: torch.Tensor, widths: Sequence[int], ignore_index: int = 255) -> list[torch.Tensor]:
    """One B×H×W boolean band per width `w`: the labelled pixels (label ≠ `ignore_index`) whose (2w+1)×(2w+1)
    window of ground-truth labels holds more than one value, `ignore_index` counting as a value — on VOC,
    whose masks outline every object with a void band, the trimap around object boundaries (paper §4.4).

    Computed on the device without a host synchronisation: the window's maximum and minimum label are
    max-pools of the labels and of their negation, each square window as a row pass then a column pass (cost
    linear in w). Two kinds of pixel are outside the image and hold no value:
    - beyond the border: `max_pool2d` pads with −∞, so the border invents no label change;
    - `pad_collate`'s padding, which fills the bottom and right of smaller images in a batch with
      `ignore_index`: the rows below an image's last row with a labelled pixel, and the columns right of its
      last column with one, are taken as outside. Such trailing all-void rows or columns of the image itself
      are thus outside too, whether the image is batched or not (the metric does not depend on the batch).
    """
    valid = masks != ignore_index
    rows = valid.any(dim=2).flip(-1).int().cummax(-1).values.flip(-1).bool()  # B×H: at or above the last labelled row
    cols = valid.any(dim=1).flip(-1).int().cummax(-1).values.flip(-1).bool()  # B×W
    inside = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)
    labels = masks.unsqueeze(1).float()
    outside = torch.tensor(float("-inf"), device=masks.device)
    high, low = torch.where(inside, labels, outside), torch.where(inside, -labels, outside)
    bands = []
    for w in widths:
        k = 2 * int(w) + 1
        h_max, h_min = (F.max_pool2d(F.max_pool2d(x, (1, k), 1, (0, w)), (k, 1), 1, (w, 0)) for x in (high, low))
        bands.append(valid & (h_max != -h_min).squeeze(1))
    return bands


class TrimapMetrics(nn.Module):
    """One `SegmentationMetrics` per trimap width, each counting only the pixels of its band; updated in the same
    pass as the whole-image matrix and synced across processes at `compute` as it is.

    `scores` averages the IoU of the classes that `val/mIoU` averages (those present in the whole-image ground
    truth or predictions) among those present in the band: the band's matrix is part of the whole-image one, so
    a band as wide as the image gives `val/mIoU` itself.
    """

    def __init__(self, widths: Sequence[int], num_classes: int = 21, ignore_index: int = 255) -> None:
        super().__init__()
        self.widths = [int(w) for w in widths]
        if any(w < 1 for w in self.widths) or len(set(self.widths)) != len(self.widths):
            raise ValueError(f"model.trimap_widths must be distinct band widths ≥ 1 pixel, got {list(widths)}")
        self.ignore_index = ignore_index
        self.bands = nn.ModuleList(SegmentationMetrics(num_classes, ignore_index) for _ in self.widths)

    def update(self, preds: torch.Tensor, masks: torch.Tensor) -> None:
        for metric, band in zip(self.bands, trimap_bands(masks, self.widths, self.ignore_index)):
            metric.update(preds, torch.where(band, masks, self.ignore_index))

    def reset(self) -> None:
        for metric in self.bands:
            metric.reset()

    def compute(self) -> dict[int, torch.Tensor]:
        """Band width → its confusion matrix over the whole split (collective: every process calls it)."""
        return {w: metric.compute() for w, metric in zip(self.widths, self.bands)}

    @staticmethod
    def miou(band_confmat: torch.Tensor, confmat: torch.Tensor) -> torch.Tensor:
        """The band's mIoU over the classes the whole-image matrix `confmat` averages."""
        counted = (confmat.sum(0) + confmat.sum(1)) > 0
        return SegmentationMetrics.scores(band_confmat)["iou"][counted].nanmean()
