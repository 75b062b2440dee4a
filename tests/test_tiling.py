"""Sliding-window inference (`predict --tile`, `--model.eval_tile`): windows land on the image's logit grid,
overlaps are averaged, strips equal one whole upsampling, an image within one window is scored exactly as
without tiling, and a trained checkpoint's tiled labels agree with its whole-image labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from experiments import predict, train
from helpers import fit_args
from lightning_modules.components.inference import (Tiling, grid_strips, labels_from, predict_labels,
                                                    predict_probabilities, tiled_grid, tiled_probabilities)
from lightning_modules.components.protocol import EvalProtocol
from lightning_modules.run.record import read_results


class PixelNet(nn.Module):
    """A network whose logit cell k is a function of pixel 4k alone (head stride 4, output stride 16): the
    same cell gets the same scores from every window that holds it, so tiling must reproduce the
    whole image's grid exactly, whatever the windows."""

    output_stride, head_stride = 16, 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Conv2d(3, 6, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x[..., ::4, ::4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.logits(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize("overlap", [0.0, 1 / 3, 0.75])
@pytest.mark.parametrize("flip", [False, True])
@torch.no_grad()
def test_windows_reproduce_the_whole_image_grid(overlap, flip):
    net = PixelNet()
    protocol = EvalProtocol(None, (1.0,), flip, None).resolve(16)
    images = torch.randn(2, 3, 150, 238)
    tiling = Tiling(65, overlap)
    grid = tiled_grid(net, images, protocol, tiling)
    canvas = F.pad(images, (0, 241 - 238, 0, 153 - 150))  # the aligned canvas on the head's stride
    assert torch.allclose(grid, net.logits(canvas).softmax(1), atol=1e-6)
    # labels strip by strip = labels of the probabilities upsampled at once
    whole = F.interpolate(grid, size=(153, 241), mode="bilinear", align_corners=True)[..., :150, :238]
    # equal up to float rounding between the two upsampling orders, which can flip a near-tie's argmax
    assert (predict_labels(net, images, protocol, tiling).long() == labels_from(whole)).float().mean() > 0.999
    assert torch.allclose(tiled_probabilities(net, images, protocol, tiling), whole, atol=1e-6)
    # the whole-image protocol takes the softmax after upsampling, not before: labels differ only between
    # cell centres (on this noise image neighbouring cells disagree everywhere, so that is a few percent)
    agree = (labels_from(whole) == labels_from(predict_probabilities(net, images, protocol))).float().mean()
    assert agree > 0.9


def test_strips_equal_one_upsampling():
    grid = torch.randn(1, 4, 23, 31)
    whole = F.interpolate(grid, size=(89, 121), mode="bilinear", align_corners=True)[..., :87, :119]
    for cells in (1, 3, 16, 50):
        strips = list(grid_strips(grid, 4, 87, 119, cells))
        assert [top for top, _ in strips] == list(range(0, 87, 4 * cells))
        assert torch.allclose(torch.cat([s for _, s in strips], -2), whole, atol=1e-6)


@torch.no_grad()
def test_an_image_within_one_window_is_scored_as_without_tiling():
    net = PixelNet()
    protocol = EvalProtocol(None, (0.5, 1.0, 1.5), True, (129, 129)).resolve(16)
    images = torch.randn(1, 3, 120, 97)
    assert torch.equal(tiled_probabilities(net, images, protocol, Tiling(120)),
                       predict_probabilities(net, images, protocol))


def test_tiled_labels_agree_with_whole_image_labels_of_a_trained_checkpoint(shapes_run, tmp_path, capfd):
    """The shapes checkpoint (65 px training crop) on a 300×240 image, 25 windows of 65 px: >= 90% of
    the pixels get the same class. The whole-image run says once that --tile exists; the tiled one not."""
    root, _, ckpt = shapes_run
    source = next(p for p in sorted((root / "images").iterdir()) if p.suffix == ".jpg")
    image = tmp_path / "big.png"
    Image.open(source).convert("RGB").resize((300, 240), Image.BILINEAR).save(image)
    for mode in ("whole", "tile"):
        assert predict.main(["--ckpt_path", str(ckpt), "--input", str(image), "--output", str(tmp_path / mode),
                             *(["--tile"] if mode == "tile" else [])]) == 0
        notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith("note:")]
        assert len(notes) == (1 if mode == "whole" else 0), notes
        assert mode == "tile" or "--tile" in notes[0], notes
    whole, tiled = (np.asarray(Image.open(tmp_path / mode / "big.png")) for mode in ("whole", "tile"))
    assert whole.shape == tiled.shape == (240, 300)
    assert (whole == tiled).mean() >= 0.9


def test_validate_with_eval_tile_gives_the_same_miou_on_images_within_a_window(shapes_run, tmp_path):
    root, run_dir, ckpt = shapes_run
    fitted = read_results(run_dir)["fit"]["metrics"]
    args = fit_args("datamodules.folder.FolderDataModule", root, tmp_path / "run", "--model.eval_tile=true",
                    "--model.eval_tile_size=513", f"--ckpt_path={ckpt}")
    train.main(["validate", *args[1:]])
    tiled = read_results(tmp_path / "run")["validate"]["metrics"]
    assert tiled["val/mIoU"] == pytest.approx(fitted["val/mIoU"], abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--tile", "--tile_size", "8"], "--tile_size: expected a window of at least the output stride (16 px), got 8"),
    (["--tile", "--tile_overlap", "1"], "--tile_overlap: expected 0 <= overlap < 1"),
    (["--tile", "--max_side", "500"], "--max_side: expected without --tile"),
])
def test_predict_bad_tiling_is_one_line(extra, message, shapes_run, tmp_path, capfd):
    root, _, ckpt = shapes_run
    image = next((root / "images").iterdir())
    assert predict.main(["--ckpt_path", str(ckpt), "--input", str(image), "--output", str(tmp_path / "out"), *extra]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"] or (len(err) == 1 and message in err[0]), err
    assert not (tmp_path / "out").exists()
