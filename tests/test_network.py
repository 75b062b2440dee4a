"""The network family, output stride in place, ASPP, decoder variants, weights (cost: test_complexity.py)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_modules.components import DeepLabV3Plus
from lightning_modules.components.aspp import ASPP, rates_for_output_stride
from lightning_modules.components.backbones import build_backbone
from lightning_modules.components.complexity import build_on_meta, count_parameters
from lightning_modules.components.decoder import parse_refine

BACKBONES = ["resnet101", "resnet50", "xception65", "xception71", "mobilenet_v2"]


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(513, 513), (500, 375)])
def test_feature_strides_and_logit_size(backbone, output_stride, size):
    net = build_on_meta(lambda: DeepLabV3Plus(backbone, output_stride=output_stride)).eval()
    x = torch.empty(2, 3, *size, device="meta")
    features = net.backbone(x)
    assert features["stride4"].shape[-2:] == tuple(ceil_div(s, 4) for s in size)
    assert features["stride8"].shape[-2:] == tuple(ceil_div(s, 8) for s in size)
    assert features["out"].shape[-2:] == tuple(ceil_div(s, output_stride) for s in size)
    assert features["stride4"].shape[1] == net.backbone.channels["stride4"]
    assert net(x).shape == (2, 21, *size)


def calibrate_batchnorm(net: nn.Module, x: torch.Tensor) -> None:
    """Give BN the statistics of real activations, so that a random network is not saturated."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        net.train()(x)
    net.eval()


@pytest.mark.parametrize("backbone", ["resnet50", "xception65", "mobilenet_v2"])
def test_output_stride_changes_in_place(backbone):
    torch.manual_seed(0)
    net = DeepLabV3Plus(backbone, output_stride=16)
    calibrate_batchnorm(net, torch.randn(2, 3, 97, 81))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 3, 97, 81)
    with torch.no_grad():
        y16 = net(x)
        net.set_output_stride(8)
        assert net.aspp.rates == [12, 24, 36]
        y8 = net(x)
        assert net.backbone(x)["out"].shape[-2:] == (13, 11)
        net.set_output_stride(16)
        y16_again = net(x)
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (y16 - y8).abs().max() > 1e-3 * y16.abs().max()
    assert torch.equal(y16, y16_again)


def test_aspp_rates_follow_output_stride():
    assert rates_for_output_stride((6, 12, 18), 16) == [6, 12, 18]
    assert rates_for_output_stride((6, 12, 18), 8) == [12, 24, 36]
    assert rates_for_output_stride((6, 12, 18), 32) == [3, 6, 9]
    aspp = ASPP(64, 32, atrous_rates=(4, 8), output_stride=8)
    assert aspp.rates == [8, 16]
    with pytest.raises(ValueError, match="whole numbers"):
        rates_for_output_stride((3,), 32)


def test_mobilenet_head_has_only_1x1_and_image_pooling():
    net = DeepLabV3Plus("mobilenet_v2", atrous_rates=[], decoder="none")
    assert len(net.aspp.atrous) == 0 and net.aspp.image_pooling is not None
    assert net.aspp.project[0].in_channels == 2 * 256
    assert net.decoder is None
    assert abs(count_parameters(net) / 1e6 - 2.11) < 0.01  # MobileNetV2 paper Table 7: 2.11M


def test_separable_aspp_and_decoder_use_depthwise_bn_relu():
    net = DeepLabV3Plus("mobilenet_v2", aspp_separable=True, decoder_separable=True)
    for branch in [*net.aspp.atrous, net.decoder.stages[0].refine[0]]:
        depthwise, bn, relu = branch[0], branch[1], branch[2]
        assert depthwise.groups == depthwise.in_channels > 1
        assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)


@pytest.mark.parametrize("spec,expected", [
    ("3x3:256,3x3:256", [(3, 256), (3, 256)]),
    ("3x3:256", [(3, 256)]),
    ("3x3:256,3x3:256,3x3:256", [(3, 256)] * 3),
    ("3x3:128", [(3, 128)]),
    ("1x1:256", [(1, 256)]),
])
def test_decoder_refine_specs(spec, expected):
    assert parse_refine(spec) == expected
    net = DeepLabV3Plus("mobilenet_v2", decoder=spec, decoder_projection=8).eval()
    convs = [m for m in net.decoder.stages[0].refine.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == expected
    assert net.decoder.stages[0].project[0].out_channels == 8
    with torch.no_grad():
        assert net(torch.randn(1, 3, 65, 49)).shape == (1, 21, 65, 49)


@pytest.mark.parametrize("bad", ["3x3", "5x5:256", "3x3:256;3x3:256", ""])
def test_decoder_bad_spec_names_the_option(bad):
    with pytest.raises(ValueError, match="decoder refine spec"):
        parse_refine(bad)


def test_decoder_conv2_plus_conv3_uses_both_taps_conv3_first():
    net = DeepLabV3Plus("resnet50", decoder="3x3:256", decoder_low_level="conv2+conv3").eval()
    assert net.decoder.taps == ("stride8", "stride4")
    assert net.decoder.stages[0].project[0].in_channels == 512  # Conv3
    assert net.decoder.stages[1].project[0].in_channels == 256  # Conv2
    with torch.no_grad():
        assert net(torch.randn(1, 3, 65, 65)).shape == (1, 21, 65, 65)


def test_no_decoder_is_deeplabv3():
    net = DeepLabV3Plus("mobilenet_v2", decoder="none")
    assert net.decoder is None and net.classifier.in_channels == 256


def test_batch_size_one_training_fails_with_reason_and_eval_works():
    net = DeepLabV3Plus("mobilenet_v2")
    with pytest.raises(ValueError, match="batch size 1.*image pooling"):
        net.train()(torch.randn(1, 3, 65, 65))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 513, 513)).shape == (1, 21, 513, 513)


def test_xception_matches_the_spec():
    """Spec §6.6: taps, strides and dilations of the official modified aligned Xception-65."""
    backbone = build_backbone("xception65")
    blocks = backbone.body.blocks
    assert len(blocks) == 21  # 3 entry + 16 middle + 2 exit
    separable = [m for m in backbone.modules() if type(m).__name__ == "SeparableConv2d"]
    assert len(separable) == 21 * 3
    for sep in separable:  # every depthwise conv is followed by its own BN
        assert sep.conv_dw.groups == sep.conv_dw.in_channels and isinstance(sep.bn_dw, nn.BatchNorm2d)
    assert all(isinstance(s.act_dw, nn.ReLU) for s in separable[-3:])  # exit block 2: ReLU inside
    assert backbone.channels == {"stride4": 256, "stride8": 728, "out": 2048}

    def dil(i):
        return blocks[i].stack.conv2.conv_dw.dilation[0]

    def stride(i):
        return blocks[i].stack.conv3.conv_dw.stride[0]

    backbone.set_output_stride(16)
    assert [stride(i) for i in (0, 1, 2, 19)] == [2, 2, 2, 1]
    assert dil(3) == 1 and dil(19) == 1 and dil(20) == 2
    backbone.set_output_stride(8)
    assert [stride(i) for i in (0, 1, 2, 19)] == [2, 2, 1, 1]
    assert dil(2) == 1 and dil(3) == 2 and dil(18) == 2 and dil(19) == 2 and dil(20) == 4
    # the stride-4 tap is the pre-activation pointwise output of block 2's second separable conv
    x = torch.randn(1, 3, 65, 65)
    backbone.eval()
    with torch.no_grad():
        taps = backbone(x)
        h = backbone.body.blocks[0](backbone.body.stem(x))
        expected = blocks[1].stack.conv2(blocks[1].stack.act2(blocks[1].stack.conv1(blocks[1].stack.act1(h))))
    assert torch.allclose(taps["stride4"], expected)
    assert (taps["stride4"] < 0).any()  # before the ReLU


def test_xception_out_equals_timm_forward_features():
    """Our tapped forward is timm's forward with two reads on the way: same weights, same output."""
    import timm

    torch.manual_seed(0)
    backbone = build_backbone("xception65").eval()
    reference = timm.create_model("xception65", num_classes=0).eval()
    missing, unexpected = reference.load_state_dict(backbone.body.state_dict(), strict=False)
    assert not missing and not unexpected
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(backbone(x)["out"], reference.forward_features(x))


def test_resnet_multi_grid_and_dilations():
    backbone = build_backbone("resnet101", multi_grid=(1, 2, 4))
    backbone.set_output_stride(16)
    assert [b.conv2.dilation[0] for b in backbone.body.layer4] == [2, 4, 8]
    assert backbone.body.layer4[0].conv2.stride == (1, 1)
    backbone.set_output_stride(8)
    assert backbone.body.layer3[0].conv2.stride == (1, 1)
    assert [b.conv2.dilation[0] for b in backbone.body.layer3][1:3] == [2, 2]
    assert [b.conv2.dilation[0] for b in backbone.body.layer4] == [4, 8, 16]


@pytest.mark.parametrize("name,factory,classifier", [
    ("resnet50", lambda: torchvision.models.resnet50(), "fc."),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), "classifier."),
    ("xception65", lambda: __import__("timm").create_model("xception65"), "head."),
])
def test_weights_from_a_local_file(tmp_path, name, factory, classifier):
    torch.manual_seed(1)
    reference = factory()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(name, weights=str(path))
    ours = backbone.body.state_dict()
    theirs = reference.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(k.startswith(classifier) for k in theirs)

    broken = dict(theirs)
    removed = next(k for k in broken if not k.startswith(classifier) and k.endswith("weight"))
    del broken[removed]
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(ValueError) as err:
        build_backbone(name, weights=str(path))
    assert removed in str(err.value) and "extra.weight" in str(err.value)


def test_unknown_weights_name_fails_loudly():
    with pytest.raises(ValueError, match="unknown resnet101 weights 'IMAGENET_NOPE'"):
        build_backbone("resnet101", weights="IMAGENET_NOPE")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("resnet50", weights="/nowhere/missing.pth")
