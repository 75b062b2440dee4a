"""Multiply-Adds counted the TF way (space-to-batch padding of atrous convs) beside the plain
count, against the paper's Tables 3 and 5; the paper's numbers in one module that `experiments` owns."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.complexity import main, multi_scale_factor, table_rows
from experiments.cli.overrides import to_cli_args
from experiments.cli.parse_only import config_reader, eval_protocol, net_kwargs
from experiments.paper import RESNET_MULTI_GRID, TABLE3, TABLE5
from lightning_modules.components import DeepLabV3Plus
from lightning_modules.components.complexity import (build_on_meta, count_multiply_adds, protocol_cost,
                                                     protocol_multiply_adds, space_to_batch_size)
from lightning_modules.components.protocol import MS_SCALES, EvalProtocol, scale_dimension

from conftest import ROOT

PAPER_MS_FACTOR = 2435.37 / 276.18  # Table 3, eval OS8: 8.818


def tf_atrous_conv(x: torch.Tensor, weight: torch.Tensor, rate: int, groups: int) -> tuple[torch.Tensor, tuple]:
    """TF's `with_space_to_batch` for a 'SAME' atrous conv, step by step; returns the output and the shape
    of the VALID rate-1 conv on the space-to-batch tensor (the op tfprof counts)."""
    k, (h, w) = weight.shape[-1], x.shape[-2:]
    start = (k - 1) * rate // 2  # _with_space_to_batch_base_paddings: (k − 1)·rate, more at the end
    end = (k - 1) * rate - start
    extra_h, extra_w = ((rate - (n + (k - 1) * rate) % rate) % rate for n in (h, w))  # required_space_to_batch_paddings
    x = F.pad(x, (start, end + extra_w, start, end + extra_h))
    c, hp, wp = x.shape[1:]
    batched = x.reshape(c, hp // rate, rate, wp // rate, rate).permute(2, 4, 0, 1, 3)
    y = F.conv2d(batched.reshape(rate * rate, c, hp // rate, wp // rate), weight, groups=groups)
    co, ho, wo = y.shape[1:]
    out = y.reshape(rate, rate, co, ho, wo).permute(2, 3, 0, 4, 1).reshape(1, co, ho * rate, wo * rate)
    return out[..., :h, :w], (rate * ho, rate * wo)  # batch_to_space crops the extra padding


@pytest.mark.parametrize("rate,groups", [(2, 1), (3, 1), (2, 6)])
def test_space_to_batch_count_of_one_atrous_conv(rate, groups):
    """A 3×3 atrous conv, 6→6 channels (or depthwise), on 5×5. TF pads to a multiple of the rate and runs
    the conv on rate² sub-images: 6×6 outputs in all (2·ceil(5/2) = 3·ceil(5/3) = 6) where PyTorch runs 5×5."""
    conv = nn.Conv2d(6, 6, 3, padding=rate, dilation=rate, groups=groups, bias=False)
    x = torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        tf_out, tf_grid = tf_atrous_conv(x, conv.weight, rate, groups)
        torch.testing.assert_close(tf_out, conv(x))  # TF's procedure is this dilated conv ...
    assert tf_grid == (space_to_batch_size(5, rate),) * 2 == (6, 6)  # ... computed on a 6×6 grid

    net = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), conv)  # the counter feeds 3-channel images
    madds = count_multiply_adds(net, size=(5, 5))
    stem = 5 * 5 * 3 * 6  # a 1×1 conv: the same both ways
    assert madds.tf - stem == 6 * 6 * 9 * (6 // groups) * 6
    assert madds.plain - stem == 5 * 5 * 9 * (6 // groups) * 6


def test_table5_every_row_within_2_percent_counted_the_tf_way():
    rows = table_rows(TABLE5)
    assert len(rows) == 24
    for r in rows:
        assert abs(r["relative_difference_tf"]) < 0.02, r
    # the plain count is what misses: 64.92B against 68.00B for row 1
    assert rows[0]["relative_difference"] < -0.04 < rows[0]["relative_difference_tf"]


def test_table3_within_15_percent_the_ms_factor_and_the_layout_explains_the_rest():
    assert all(row.train["model.net.init_args.multi_grid"] == RESNET_MULTI_GRID for row in TABLE3.rows)
    rows = table_rows(TABLE3, explain_layout=True)
    assert len(rows) == 14
    for r in rows:
        assert abs(r["relative_difference_tf"]) < 0.15, r
        # the official beta layout, counted the same way, closes the gap (rows 5/13 overshoot by 1.3%:
        # the paper's eval-OS16 decoder increment, 20.26B, is 1.5B under the decoder's cost)
        assert abs(r["relative_difference_resnet_beta_tf"]) < 0.015, r
    assert rows[0]["resnet_beta_parameters_millions"] == 58.16  # MobileNetV2 paper Table 7: DeepLabv3 ResNet-101
    assert multi_scale_factor(rows, "ours_multiply_adds_tf_billions") == pytest.approx(PAPER_MS_FACTOR, rel=0.015)
    assert multi_scale_factor(rows, "ours_multiply_adds_billions") < 0.985 * PAPER_MS_FACTOR  # plain: 8.629


def test_plain_count_unchanged_and_the_beta_layout_matches_its_measurement():
    """Spec §10, ResNet-101 at 513×513: torchvision layout (plain count, what we execute) and the official
    beta layout (3×3 stem, stride in the last unit; measured with plain counting: 76.05B at OS16)."""
    measured = {  # (output stride, decoder): (torchvision layout, beta layout)
        (16, "none"): (71.06, 76.05), (8, "none"): (246.18, 252.25), (16, "3x3:256,3x3:256"): (92.82, 97.81),
        (8, "3x3:256,3x3:256"): (267.92, 273.99), (32, "none"): (47.52, 51.41), (32, "3x3:256,3x3:256"): (69.28, 73.17)}
    for (output_stride, decoder), (ours, beta) in measured.items():
        # multi-grid changes dilations only, not the plain count (and so shares the Table 3 rows' counts)
        config = {"backbone": "resnet101", "decoder": decoder, "multi_grid": RESNET_MULTI_GRID}
        protocol = EvalProtocol(output_stride)
        assert protocol_cost(config, protocol)["speed/multiply_adds"] == pytest.approx(ours, abs=0.01)
        assert protocol_multiply_adds(config, protocol, "resnet_beta").plain / 1e9 == pytest.approx(beta, abs=0.01)


def test_protocol_scales_flip_and_canvas():
    config = {"backbone": "mobilenet_v2", "atrous_rates": [], "decoder": "none"}  # mobilenetv2_os16.yaml
    net = build_on_meta(lambda: DeepLabV3Plus(**config))
    per_scale = [count_multiply_adds(net, size=(scale_dimension(513, s),) * 2) for s in MS_SCALES]
    ms = protocol_multiply_adds(config, EvalProtocol(scales=MS_SCALES))
    assert ms.tf == sum(m.tf for m in per_scale) and ms.plain == sum(m.plain for m in per_scale)
    assert protocol_multiply_adds(config, EvalProtocol(scales=MS_SCALES, flip=True)) == ms * 2
    cost = protocol_cost(config, EvalProtocol())
    assert cost["speed/multiply_adds"] == pytest.approx(2.74, abs=0.01)  # MobileNetV2 paper Table 7: 2.75B
    assert cost["speed/multiply_adds_tf"] == pytest.approx(2.74, abs=0.01)  # no atrous ASPP: barely differs
    assert cost["speed/parameters"] == pytest.approx(2.11, abs=0.01)
    bigger = protocol_cost(config, EvalProtocol(canvas=(769, 769)))["speed/multiply_adds"]
    assert bigger / cost["speed/multiply_adds"] == pytest.approx((769 / 513) ** 2, rel=0.05)


def parse(configs: list[str], overrides: dict) -> object:
    return config_reader().parse([ROOT / c for c in configs], to_cli_args(overrides))


def test_config_eval_protocol_reads_the_canvas():
    """The cost counter's config is the training CLI's parse: SegmentationModule's defaults (eval_flip, the
    scales) and DeepLabV3Plus's (atrous rates) come from their signatures, the class count from the data."""
    config = parse(["experiments/configs/xception65_os16.yaml"], {"model.eval_output_stride": 8})
    assert eval_protocol(config) == EvalProtocol(8, (1.0,), False, (513, 513))
    net = net_kwargs(config)
    assert net["backbone"] == "xception65" and net["atrous_rates"] == [6, 12, 18] and net["num_classes"] == 21
    config = parse([], {"model.eval_canvas": [769, 1025], "model.eval_scales": list(MS_SCALES)})
    assert eval_protocol(config) == EvalProtocol(16, MS_SCALES, False, (769, 1025))
    config = parse(["experiments/configs/cityscapes_xception65_os16.yaml"], {})
    assert net_kwargs(config)["num_classes"] == 19  # linked from the datamodule, as fit links it
    with pytest.raises(ValueError, match=r"eval canvas \[500, 500\] is not aligned for output stride 16"):
        eval_protocol(parse([], {"model.eval_canvas": [500, 500]}))


def test_complexity_command_prints_both_counts(capsys):
    assert main(["--config", str(ROOT / "experiments/configs/mobilenetv2_os16.yaml"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["multiply_adds_billions"] == pytest.approx(2.74, abs=0.01)
    assert result["multiply_adds_tf_billions"] >= result["multiply_adds_billions"]
    assert result["eval_canvas"] == [513, 513] and result["parameters_millions"] == pytest.approx(2.11, abs=0.01)

    assert main(["--paper-tables"]) == 0  # counted above already: cached
    out = capsys.readouterr().out
    assert "Multi-scale factor (Table 3, eval OS8, MS ÷ single scale): paper 8.818, TF 8.827" in out
    for row in (*TABLE3.rows, *TABLE5.rows):
        assert f" {row.name} " in out
