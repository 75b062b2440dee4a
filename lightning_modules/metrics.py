"""mIoU the VOC way: one confusion matrix accumulated over the whole val set, then IoU per class."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
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
    """One B×H×W boolean band per width `w` (ascending): the labelled pixels (label ≠ `ignore_index`) whose
    (2w+1)×(2w+1) window of ground-truth labels holds more than one value, `ignore_index` counting as a value —
    on VOC, whose masks outline every object with a void band, the trimap around object boundaries (§4.4).

    Computed on the device without a host synchronisation: the window's maximum and minimum label are
    max-pools of the labels and of their negation, each square window as a row pass then a column pass
    (`max_pool1d`, several times faster on a CPU than a `max_pool2d` with a 1×k window), and
    each width pools the previous width's maps further (a k₁ then a k₂ window is a k₁ + k₂ − 1 window), so
    all widths together cost one pass of the widest. Two kinds of pixel are outside the image and hold no value:
    - beyond the border: max pooling pads with −∞, so the border invents no label change;
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
    pooled = torch.cat([torch.where(inside, labels, outside), torch.where(inside, -labels, outside)], dim=1)
    bands, done = [], 0
    for w in widths:
        if w < done:
            raise ValueError(f"trimap widths must ascend, got {list(widths)}")
        grow = int(w) - done
        if grow:
            pooled = _max_pool_rows(_max_pool_rows(pooled, grow).transpose(-1, -2), grow).transpose(-1, -2)
        done = int(w)
        bands.append(valid & (pooled[:, 0] != -pooled[:, 1]))
    return bands


def _max_pool_rows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over a (2·radius + 1)-wide window along the last dimension, −∞ beyond the ends."""
    return F.max_pool1d(x.reshape(-1, 1, x.shape[-1]), 2 * radius + 1, 1, radius).view(x.shape)


def _bincount(x: torch.Tensor, length: int) -> torch.Tensor:
    """`torch.bincount`, or under `torch.use_deterministic_algorithms` on a GPU (where bincount refuses to run)
    counts from `unique`, which synchronises with the host but gives the same counts."""
    if not (x.is_cuda and torch.are_deterministic_algorithms_enabled()):
        return torch.bincount(x, minlength=length)
    values, counts = torch.unique(x, return_counts=True)
    out = torch.zeros(length, dtype=torch.long, device=x.device)
    out[values] = counts
    return out


class TrimapMetrics(Metric):
    """One confusion matrix per trimap width, each counting only the pixels of its band, updated in the same
    pass as the whole-image matrix and summed across processes at `compute` as it is (a torchmetrics state).

    The bands are nested (a narrower band lies inside a wider one): each pixel is counted once, at the
    narrowest band that holds it, by one `bincount` for all widths, and `compute` sums the narrower ones in.
    `miou` averages the IoU of the classes that `val/mIoU` averages (those present in the whole-image ground
    truth or predictions) among those present in the band: a band's matrix is part of the whole-image one, so
    a band as wide as the image gives `val/mIoU` itself.
    """

    full_state_update = False

    def __init__(self, widths: Sequence[int], num_classes: int = 21, ignore_index: int = 255) -> None:
        super().__init__()
        self.widths = sorted(int(w) for w in widths)
        if any(w < 1 for w in self.widths) or len(set(self.widths)) != len(self.widths):
            raise ValueError(f"model.trimap_widths must be distinct band widths ≥ 1 pixel, got {list(widths)}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # counts[i]: pixels whose narrowest band is widths[i]; counts[-1]: labelled pixels in no band
        self.add_state("counts", torch.zeros(len(self.widths) + 1, num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, masks: torch.Tensor) -> None:
        if not self.widths:
            return
        n, c = len(self.widths), self.num_classes
        bands = trimap_bands(masks, self.widths, self.ignore_index)
        narrowest = n - torch.stack(bands).sum(0)  # index of the narrowest band holding the pixel, n if none
        index = (narrowest * c + masks.clamp(max=c - 1)) * c + preds
        index = torch.where(masks != self.ignore_index, index, (n + 1) * c * c)  # unlabelled: one spare bin
        counts = _bincount(index.flatten(), (n + 1) * c * c + 1)
        self.counts += counts[:-1].view(n + 1, c, c)

    def compute(self) -> dict[int, torch.Tensor]:
        """Band width → its confusion matrix over the whole split (collective: every process calls it)."""
        return dict(zip(self.widths, self.counts[:-1].cumsum(0)))

    @staticmethod
    def miou(band_confmat: torch.Tensor, confmat: torch.Tensor) -> torch.Tensor:
        """The band's mIoU over the classes the whole-image matrix `confmat` averages."""
        counted = (confmat.sum(0) + confmat.sum(1)) > 0
        return SegmentationMetrics.scores(band_confmat)["iou"][counted].nanmean()
