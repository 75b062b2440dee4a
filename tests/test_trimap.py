"""The trimap mIoU (paper §4.4, Figure 5): the band against scipy's min/max filters, batching, the full-width case."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from datamodules.dataset import pad_collate
from lightning_modules.metrics import SegmentationMetrics, TrimapMetrics, trimap_bands

WIDTHS = (1, 3, 8)


def _masks_and_predictions(seed: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky 4-class ground truth with a 2-px void outline around one rectangle, as VOC's; noisy predictions."""
    g = np.random.default_rng(seed)
    mask = np.kron(g.integers(0, 4, (h // 6 + 1, w // 6 + 1)), np.ones((6, 6), dtype=np.int64))[:h, :w]
    top, left = g.integers(2, h // 2), g.integers(2, w // 2)
    mask[top - 2 : top + 10, left - 2 : left + 12] = 255
    mask[top : top + 8, left : left + 10] = 1
    pred = np.where(g.random((h, w)) < 0.3, g.integers(0, 4, (h, w)), np.where(mask == 255, 0, mask))
    return torch.from_numpy(mask.astype(np.uint8)), torch.from_numpy(pred)


def _scipy_band(mask: np.ndarray, w: int) -> np.ndarray:
    """The definition, independently: `nearest` repeats the border pixels, which adds no new value to a window."""
    size = 2 * w + 1
    high = ndimage.maximum_filter(mask.astype(np.int64), size=size, mode="nearest")
    low = ndimage.minimum_filter(mask.astype(np.int64), size=size, mode="nearest")
    return (mask != 255) & (high != low)


def test_band_and_band_miou_match_scipy_min_max_filters():
    samples = [_masks_and_predictions(seed, h, w) for seed, (h, w) in enumerate([(37, 45), (29, 33), (41, 30)])]
    metric = TrimapMetrics(WIDTHS, num_classes=4)
    whole = SegmentationMetrics(num_classes=4)
    expected = {w: np.zeros((4, 4), dtype=np.int64) for w in WIDTHS}
    for mask, pred in samples:
        for w, band in zip(WIDTHS, trimap_bands(mask[None].long(), WIDTHS)):
            reference = _scipy_band(mask.numpy(), w)
            assert reference.any() and not reference.all()
            np.testing.assert_array_equal(band[0].numpy(), reference)
            np.add.at(expected[w], (mask.numpy()[reference], pred.numpy()[reference]), 1)
        metric.update(pred[None], mask[None].long())
        whole.update(pred[None], mask[None].long())
    confmats = metric.compute()
    for w in WIDTHS:
        np.testing.assert_array_equal(confmats[w].numpy(), expected[w])
        tp = np.diag(expected[w]).astype(float)
        union = expected[w].sum(0) + expected[w].sum(1) - tp
        reference_miou = np.nanmean(np.where(union > 0, tp / np.maximum(union, 1), np.nan))
        assert abs(TrimapMetrics.miou(confmats[w], whole.compute()).item() - reference_miou) < 1e-9
    # narrower bands are parts of wider ones
    assert (confmats[1] <= confmats[3]).all() and (confmats[3] <= confmats[8]).all()


def test_padding_a_batch_creates_no_boundary():
    """`pad_collate` fills smaller images with 255 on the bottom and right: each image's band is the same batched
    as alone (where an image's own last row and column hold labelled pixels, as here)."""
    samples = [_masks_and_predictions(seed, h, w) for seed, (h, w) in enumerate([(37, 45), (25, 33)])]
    images = [torch.zeros(3, *m.shape, dtype=torch.uint8) for m, _ in samples]
    _, masks = pad_collate(list(zip(images, [m for m, _ in samples])))
    batched = trimap_bands(masks.long(), WIDTHS)
    for i, (mask, _) in enumerate(samples):
        h, w = mask.shape
        for band, width in zip(batched, WIDTHS):
            alone = trimap_bands(mask[None].long(), [width])[0][0]
            np.testing.assert_array_equal(band[i, :h, :w].numpy(), alone.numpy())
            assert not band[i, h:].any() and not band[i, :, w:].any()
    # a plain min/max pool of the padded batch would put the smaller image's last rows and columns in the band
    assert not torch.equal(batched[0][1, :25, :33], _pad_as_value(masks[1].long(), WIDTHS[0])[:25, :33])


def _pad_as_value(mask: torch.Tensor, w: int) -> torch.Tensor:
    """The band if the padding counted as a value: what a plain min/max pool of the padded batch would give."""
    return torch.from_numpy(_scipy_band(mask.numpy(), w))


def test_a_band_wider_than_the_image_is_the_whole_image_miou():
    samples = [_masks_and_predictions(seed, 31, 40) for seed in range(3)]
    metric, whole = TrimapMetrics([1000], num_classes=4), SegmentationMetrics(num_classes=4)
    for mask, pred in samples:
        metric.update(pred[None], mask[None].long())
        whole.update(pred[None], mask[None].long())
    confmat = whole.compute()
    assert torch.equal(metric.compute()[1000], confmat)
    assert TrimapMetrics.miou(metric.compute()[1000], confmat) == SegmentationMetrics.scores(confmat)["mIoU"]
