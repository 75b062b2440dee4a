"""The official loss switches (`top_k_percent_pixels`, `hard_example_mining_step`, `label_weights`) against
the official formula written here in numpy, independently of `lightning_modules.losses`; a short fit with
all three; bad values as one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from datamodules import synthetic
from experiments import train
from experiments.cli.overrides import to_cli_args
from helpers import fit_args
from lightning_modules.class_balance import cache_path, count_classes
from lightning_modules.losses import kept_pixels, median_frequency_weights, segmentation_loss

IGNORE = 255


def official_loss(logits: np.ndarray, labels: np.ndarray, weights=None, p: float = 1.0, step_ramp: int = 0,
                  step: int = 0) -> float:
    """`add_softmax_cross_entropy_loss_for_each_scale` (tensorflow/models research/deeplab/utils/train_utils.py)
    for N×C logits and N labels, in float32 as TF computes it."""
    logits = logits.astype(np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    one_hot = np.zeros_like(logits)
    valid = labels != IGNORE
    one_hot[np.nonzero(valid)[0], labels[valid]] = 1.0  # tf.one_hot of 255 is all zeros
    pixel_losses = -(one_hot * log_softmax).sum(axis=1)
    table = np.ones(logits.shape[1], np.float32) if weights is None else np.asarray(weights, np.float32)
    pixel_weights = np.where(valid, table[np.where(valid, labels, 0)], np.float32(0))  # get_label_weight_mask
    weighted = pixel_losses * pixel_weights
    keep_mask = valid.astype(np.float32)
    if p == 1.0:
        total, num_present = weighted.sum(), keep_mask.sum()
    else:
        num_pixels = np.float32(labels.size)
        if step_ramp == 0:
            top_k = int(np.float32(p) * num_pixels)
        else:
            ratio = min(np.float32(1.0), np.float32(step) / np.float32(step_ramp))
            top_k = int((np.float32(ratio) * np.float32(p) + (np.float32(1.0) - np.float32(ratio))) * num_pixels)
        top = np.sort(weighted)[::-1][:top_k]
        total, num_present = top.sum(), np.float32((top != 0.0).sum())
    return float(np.float32(num_present > 0) * total / max(np.float32(1e-5), num_present))


def ours(logits: np.ndarray, labels: np.ndarray, weights=None, p: float = 1.0, step_ramp: int = 0, step: int = 0) -> float:
    """`segmentation_loss` on the same pixels laid out as a 1×C×1×N image."""
    x = torch.from_numpy(logits.T.copy()).unsqueeze(0).unsqueeze(2)
    y = torch.from_numpy(labels).long().view(1, 1, -1)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return float(segmentation_loss(x, y, IGNORE, w, p, step_ramp, step))


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """10 pixels, 3 classes: pixels 0–3 have identical logits and labels (tied losses across the top-k
    boundary), pixel 7 is confidently right (near-zero loss), pixels 8 and 9 are ignored."""
    logits = np.array([[2.0, 0.5, -1.0]] * 4 + [[0.1, 3.0, 0.2], [1.0, 1.0, 1.0], [-2.0, 0.0, 2.5], [9.0, -9.0, -9.0],
                                                [0.3, 0.2, 0.1], [5.0, -5.0, 0.0]], np.float32)
    labels = np.array([1, 1, 1, 1, 0, 2, 2, 0, IGNORE, IGNORE])
    return logits, labels


def test_kept_pixels_ramp_and_rounding_as_the_official_code():
    # step 0, midway and after the ramp, and the truncation (int) of the float32 product
    assert [kept_pixels(16, 0.25, 4, s) for s in (0, 2, 4, 100)] == [16, 10, 4, 4]
    assert kept_pixels(10, 0.25, 0, 0) == 2  # 2.5 → 2
    assert kept_pixels(10, 0.25, 3, 1) == int(np.float32(1 / 3) * np.float32(0.25) * 10 + (1 - np.float32(1 / 3)) * 10)
    for n in (1, 7, 513 * 513, 4 * 513 * 513):
        for p in (0.05, 0.15, 0.25, 0.7, 1.0):
            assert kept_pixels(n, p, 0, 0) == int(np.float32(p) * np.float32(n))


@pytest.mark.parametrize("p, ramp, step", [(1.0, 0, 0), (0.3, 0, 0), (0.5, 0, 0), (0.05, 0, 0), (0.25, 4, 0),
                                           (0.25, 4, 2), (0.25, 4, 4), (0.25, 4, 9), (0.9, 0, 0)])
@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0], [0.0, 1.0, 3.0]])
def test_loss_matches_the_official_formula(p, ramp, step, weights):
    logits, labels = hand_made()
    assert ours(logits, labels, weights, p, ramp, step) == pytest.approx(official_loss(logits, labels, weights, p, ramp, step),
                                                                         rel=1e-5, abs=1e-7)


def test_loss_without_switches_is_the_plain_mean_and_ignored_pixels_never_count():
    logits, labels = hand_made()
    plain = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long(), ignore_index=IGNORE)
    assert ours(logits, labels) == pytest.approx(float(plain), rel=1e-6)
    # whatever the logits of ignored pixels, the loss is the same, with and without mining and weights
    changed = logits.copy()
    changed[8:] = [[-50.0, 50.0, 0.0], [0.0, 0.0, 80.0]]
    for args in ((None, 1.0), ([0.5, 2.0, 1.0], 1.0), (None, 0.5), ([0.5, 2.0, 1.0], 0.25, 4, 2)):
        assert ours(changed, labels, *args) == ours(logits, labels, *args)
    # weights divide by the labelled pixel count, not by the sum of weights (PyTorch's weighted mean)
    w = [0.5, 2.0, 1.0]
    torch_weighted = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long(),
                                                       weight=torch.tensor(w), ignore_index=IGNORE)
    assert ours(logits, labels, w) != pytest.approx(float(torch_weighted), rel=1e-3)


def test_top_k_keeps_the_hardest_pixels():
    logits, labels = hand_made()
    x = torch.from_numpy(logits)
    losses = torch.nn.functional.cross_entropy(x, torch.from_numpy(np.where(labels == IGNORE, 0, labels)).long(),
                                               reduction="none")[:8]
    # 10 pixels, p = 0.3 → the 3 hardest of the 8 labelled pixels
    assert ours(logits, labels, p=0.3) == pytest.approx(float(losses.sort(descending=True).values[:3].mean()), rel=1e-6)


def test_median_frequency_weights_by_hand(tmp_path):
    # 3 masks of 4 pixels: class 0 in all (2 + 4 + 1 of 4, 4, 3 labelled pixels), class 1 in the first,
    # class 2 in the last; class 3 nowhere; 255 ignored
    masks = [torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 2, 2, IGNORE]])]
    pixels, image_pixels = count_classes(list(range(3)), lambda i: (None, masks[i].to(torch.uint8)), 4, IGNORE)
    assert pixels == [7, 2, 2, 0] and image_pixels == [11, 4, 3, 0]
    freq = np.array([7 / 11, 2 / 4, 2 / 3])
    median = np.median(freq)
    assert median_frequency_weights(pixels, image_pixels) == pytest.approx([*(median / freq), 1.0])


def test_a_short_fit_with_every_switch_records_them(tmp_path):
    """The three switches as the ablation runner passes overrides (`to_cli_args`): the fit runs, its
    config.yaml and checkpoint hold them, the median-frequency weights are counted and cached."""
    root = synthetic.generate_folder(tmp_path / "data", n_train=8, n_val=4)  # written here: the cache goes beside it
    run_dir = tmp_path / "run"
    switches = {"model.top_k_percent_pixels": 0.25, "model.hard_example_mining_step": 2,
                "model.label_weights": "median_frequency"}
    train.main(fit_args("datamodules.folder.FolderDataModule", root, run_dir, *to_cli_args(switches)))
    config = yaml.safe_load(next(run_dir.rglob("config.yaml")).read_text())
    assert {k: config["model"][k.split(".")[1]] for k in switches} == switches
    cached = yaml.safe_load(cache_path(root, "train").read_text())
    assert len(cached["weights"]) == 5 and all(w > 0 for w in cached["weights"])
    hparams = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=False)["hyper_parameters"]
    assert (hparams["top_k_percent_pixels"], hparams["hard_example_mining_step"], hparams["label_weights"]) == \
        (0.25, 2, "median_frequency")


@pytest.mark.parametrize("extra, message", [
    (["--model.top_k_percent_pixels=0"], "--model.top_k_percent_pixels: expected 0 < p <= 1 (1 = every pixel), got 0.0"),
    (["--model.top_k_percent_pixels=1.5"], "--model.top_k_percent_pixels: expected 0 < p <= 1"),
    (["--model.hard_example_mining_step=-1"], "--model.hard_example_mining_step: expected a number of steps >= 0"),
    (["--model.label_weights=[1.0,2.0]"], "--model.label_weights: expected 21 weights, one per class of the dataset, "
                                          "or median_frequency; got 2"),
    (["--model.label_weights=[1.0,-2.0]"], "--model.label_weights: expected weights >= 0, not all 0, got [1.0, -2.0]"),
    (["--model.eval_tile_size=8"], "--model.eval_tile_size: expected a window of at least the output stride (16 px), got 8"),
    (["--model.eval_tile_overlap=1.0"], "--model.eval_tile_overlap: expected 0 <= overlap < 1"),
])
def test_bad_values_are_one_line_before_anything_is_created(extra, message, voc_root, tmp_path, capfd):
    from helpers import tiny_args

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train.main(["fit", *tiny_args(voc_root, run_dir), *extra])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err and not run_dir.exists()
