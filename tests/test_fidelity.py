"""The protocol details that each cost measurable mIoU on real VOC when they differ from the
official code — aligned evaluation canvas, label resizing, weight decay, frozen BN, global batch."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torchvision import tv_tensors

from datamodules.transforms import RandomScaleCrop
from experiments import train
from datamodules.voc_datamodule import VOCDataModule
from lightning_modules.components import DeepLabV3Plus
from lightning_modules.components.protocol import EvalProtocol
from lightning_modules.components.inference import labels_from, pixel_nll, predict_probabilities
from lightning_modules.segmentation import SegmentationModule

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


class SampleEveryStride(nn.Module):
    """Stand-in network: its logits are its input sampled every `output_stride` pixels, resized back to
    the input size the way DeepLabV3Plus resizes (bilinear, align_corners=True)."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = x[..., :: self.output_stride, :: self.output_stride]
        return F.interpolate(cells, size=x.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(500, 375), (333, 500), (513, 513)])
@pytest.mark.parametrize("flip", [False, True])
def test_each_pixel_is_predicted_from_its_nearest_feature_cell(output_stride, size, flip):
    """Each feature row and column gets a random class; one group of channels carries the column's class
    (constant down a column), the other the row's. Bilinear resizing then interpolates along one axis per
    group, so the argmax of a group names the nearest feature cell along that axis — when the canvas is
    aligned. Evaluated as it is, a 500×375 image stretches the cell grid and pixels drift to a neighbour."""
    h, w = size
    classes = 5
    g = torch.Generator().manual_seed(0)
    labels, keep = [], []
    for side in (h, w):
        cell_class = torch.randint(classes, ((side - 1) // output_stride + 2,), generator=g)
        pixels = torch.arange(side)
        nearest = torch.div(pixels + output_stride // 2, output_stride, rounding_mode="floor")
        labels.append(cell_class[nearest])
        # left out: ties half-way between two cells, and pixels whose nearest cell is canvas padding
        keep.append((pixels % output_stride != output_stride // 2) & (nearest * output_stride < side))
    rows = F.one_hot(labels[0], classes).T[:, :, None].expand(classes, h, w)
    cols = F.one_hot(labels[1], classes).T[:, None, :].expand(classes, h, w)
    image = torch.cat([rows, cols])[None].float() * 20
    protocol = EvalProtocol(output_stride, flip=flip).resolve(output_stride)
    probs = predict_probabilities(SampleEveryStride(output_stride), image, protocol)[0]
    assert probs.shape[-2:] == (h, w)
    row_pred, col_pred = probs[:classes].argmax(0), probs[classes:].argmax(0)
    assert torch.equal(row_pred[keep[0]], labels[0][:, None].expand(h, w)[keep[0]])
    assert torch.equal(col_pred[:, keep[1]], labels[1][None, :].expand(h, w)[:, keep[1]])


def test_canvas_is_the_config_size_or_the_smallest_aligned_size_that_holds_the_image():
    voc = EvalProtocol().resolve(16)
    assert voc.canvas_size(500, 375) == (513, 513) and voc.canvas_size(513, 513) == (513, 513)
    assert voc.canvas_size(600, 500) == (641, 513)  # (641 − 1) = 10 · 64
    assert EvalProtocol(canvas=None).resolve(8).canvas_size(375, 500) == (385, 513)
    with pytest.raises(ValueError, match="eval canvas \\[500, 500\\] is not aligned for output stride 16"):
        EvalProtocol(canvas=500).resolve(16)


def test_multi_scale_and_flip_average_probabilities_on_the_canvas():
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 3, padding=1)  # not left-right symmetric, so a flip changes its output
    x = torch.randn(1, 3, 17, 23)
    protocol = EvalProtocol(8, canvas=None).resolve(8)  # canvas 33×33

    def on_canvas(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 33 - 23, 0, 33 - 17))

    single = predict_probabilities(net, x, protocol)
    assert torch.allclose(single, net(on_canvas(x)).softmax(1)[..., :17, :23], atol=1e-6)
    flipped = predict_probabilities(net, x, EvalProtocol(8, flip=True, canvas=None).resolve(8))
    c = on_canvas(x)
    expected = (net(c).softmax(1) + net(c.flip(-1)).flip(-1).softmax(1)) / 2
    assert torch.allclose(flipped, expected[..., :17, :23], atol=1e-6)
    ms = predict_probabilities(net, x, EvalProtocol(8, (0.5, 1.0, 1.75), True, None).resolve(8))
    assert ms.shape == (1, 4, 17, 23) and torch.allclose(ms.sum(1), torch.ones(1, 17, 23))
    assert not torch.allclose(ms, flipped)


def test_eval_loss_and_labels_without_a_host_sync_match_the_reference():
    """`val/loss` per batch is the NLL of the true class over labelled pixels, as `F.nll_loss` computes
    it, with the pixel count that weights the batch in the whole-set mean; labels are argmax's, ties
    included (the first maximum)."""
    torch.manual_seed(0)
    probs = torch.randn(2, 5, 7, 9).softmax(dim=1)
    masks = torch.randint(0, 5, (2, 7, 9))
    masks[0, :3] = 255
    loss, count = pixel_nll(probs, masks, ignore_index=255)
    assert count == (masks != 255).sum()
    assert torch.allclose(loss, F.nll_loss(probs.log(), masks, ignore_index=255))
    loss, count = pixel_nll(probs, torch.full_like(masks, 255), ignore_index=255)
    assert count == 0 and loss == 0
    ties = torch.tensor([0.2, 0.4, 0.4, 0.0]).view(1, 4, 1, 1).repeat(1, 1, 7, 9)
    probs[:, :4] = ties
    assert torch.equal(labels_from(probs), probs.argmax(dim=1)) and labels_from(ties).eq(1).all()


@pytest.mark.parametrize("scale", [0.75, 1.25])
def test_resized_labels_stay_on_their_image_pixels(scale):
    """Thin stripes drawn into both image and mask: after the random scale, a pixel is labelled exactly
    where the (bilinear, pixel-centre) image is bright. Legacy nearest shifts labels by half a pixel."""
    h, w = 120, 160
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    for x0, width in ((13, 2), (40, 3), (77, 2), (121, 3)):
        mask[0, :, x0:x0 + width] = 1
    for y0, width in ((21, 2), (58, 3), (95, 2)):
        mask[0, y0:y0 + width, :] = 1
    image = mask.expand(3, h, w) * 255
    out_image, out_mask = RandomScaleCrop(512, (scale, scale))(tv_tensors.Image(image), tv_tensors.Mask(mask))
    inside = out_mask[0] != 255
    labelled, bright = out_mask[0][inside] == 1, out_image[0][inside] >= 128
    assert labelled.sum() > 1000 and torch.equal(labelled, bright)


def _decay_of(module: SegmentationModule) -> dict[int, float]:
    optimizer = module.configure_optimizers()["optimizer"]
    return {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


class _Trainer:  # configure_optimizers reads only max_steps
    max_steps = 10


def test_weight_decay_only_on_dense_conv_weights_by_default():
    module = SegmentationModule(DeepLabV3Plus("mobilenet_v2", aspp_separable=True, decoder_separable=True))
    module.trainer = _Trainer()
    decay = _decay_of(module)
    net = module.net
    assert decay[id(net.classifier.weight)] == 1e-4 and decay[id(net.classifier.bias)] == 0.0
    lrs = {id(p): group["lr"] for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert lrs[id(net.classifier.bias)] == 2 * lrs[id(net.classifier.weight)] == 2 * 0.007  # official bias ×2
    assert decay[id(net.aspp.conv1x1[0].weight)] == 1e-4
    bn = net.aspp.conv1x1[1]
    assert decay[id(bn.weight)] == 0.0 and decay[id(bn.bias)] == 0.0
    depthwise = net.aspp.atrous[0][0]
    assert depthwise.groups == depthwise.in_channels and decay[id(depthwise.weight)] == 0.0
    assert len(decay) == sum(1 for _ in net.parameters())
    everything = SegmentationModule(DeepLabV3Plus("mobilenet_v2"), weight_decay_params="all")
    everything.trainer = _Trainer()
    assert set(_decay_of(everything).values()) == {1e-4}


def test_frozen_bn_keeps_statistics_but_trains_gamma_and_beta():
    torch.manual_seed(0)
    module = SegmentationModule(DeepLabV3Plus("mobilenet_v2", atrous_rates=[], decoder="none"), freeze_bn=True)
    module.trainer = _Trainer()
    module.train()
    bns = [m for m in module.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    bn = module.net.aspp.conv1x1[1]
    stats = bn.running_mean.clone()
    optimized = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    F.cross_entropy(module.net(torch.randn(2, 3, 65, 65)), torch.randint(21, (2, 65, 65))).backward()
    assert torch.equal(stats, bn.running_mean)
    assert id(bn.weight) in optimized and id(bn.bias) in optimized and bn.weight.grad.abs().sum() > 0
    frozen = SegmentationModule(DeepLabV3Plus("mobilenet_v2"), freeze_bn=True, freeze_bn_affine=True)
    assert all(not p.requires_grad for m in frozen.net.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters())


@pytest.mark.parametrize("backbone, official", [("resnet50", 0.05), ("mobilenet_v2", 0.003)])
def test_bn_momentum_is_the_official_one_per_part(backbone, official):
    with torch.device("meta"):
        module = SegmentationModule(DeepLabV3Plus(backbone))
    assert {m.momentum for m in module.net.backbone.modules() if isinstance(m, nn.BatchNorm2d)} == {official}
    head = [m for part in (module.net.aspp, module.net.decoder) for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
    assert head and {m.momentum for m in head} == {0.0003}


class _World:
    def __init__(self, world_size: int) -> None:
        self.global_rank, self.world_size = 0, world_size


def test_batch_size_is_the_global_batch(voc_root):
    data = VOCDataModule(root=str(voc_root), batch_size=16, num_workers=0)
    data.trainer = _World(4)
    assert data.per_process_batch_size == 4
    data.trainer = _World(3)
    with pytest.raises(ValueError, match="data.batch_size=16 is the global batch and must divide evenly over 3"):
        data.per_process_batch_size


def test_paper_config_resolves_to_the_official_protocol(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as printed:  # `--print_config` prints the resolved config and exits
        train.main(["fit", "--config", "experiments/configs/resnet101_os16.yaml", "--print_config"])
    assert printed.value.code in (0, None)
    out = capsys.readouterr().out
    config = yaml.safe_load(out)
    net = config["model"]["net"]["init_args"]
    assert net["backbone"] == "resnet101" and net["multi_grid"] == [1, 2, 4]
    data = config["data"]["init_args"]  # the dataset layout is a class_path (VOC by default)
    assert data["scale_step"] == 0.25 and data["batch_size"] == 16
    assert config["model"]["weight_decay_params"] == "conv_weights" and config["model"]["weight_decay"] == 1e-4
    assert config["model"]["eval_canvas"] == [513, 513]
