"""Paper Table 7(a) on Cityscapes, and the Xception-71 of its last row (its feature strides at output
stride 8/16/32: tests/test_network.py; its official-graph equivalence: tests/test_official.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ablations import table7_cityscapes
from ablations.runner import main
from lightning_modules.components import DeepLabV3Plus
from lightning_modules.components.backbones import build_backbone
from lightning_modules.components.complexity import build_on_meta

OFFICIAL = Path(__file__).parent / "official"
#: official `xception_71` (core/xception.py): (last depth, stride) of every unit, entry / middle / exit flow
OFFICIAL_UNITS = ([(128, 2), (256, 1), (256, 2), (728, 1), (728, 2)] + [(728, 1)] * 16
                  + [(1024, 2), (2048, 1)])


def test_dry_run_lists_the_four_rows_and_the_zoo_multiply_adds(capsys):
    assert main(table7_cityscapes.TABLE, ["--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("x65-", "x71-"))}
    assert [line.split()[-1] for line in rows.values()] == ["77.33%", "78.79%", "79.14%", "79.55%"]
    paper, ours_tf, ours_plain = (float(v[:-1]) for v in rows["x65-dec-aspp-ip"].split()[3:6])
    assert paper == 418.64 and abs(ours_tf / paper - 1) < 0.02, rows["x65-dec-aspp-ip"]
    # Xception-71 costs more than Xception-65 on the same head (row 3)
    assert float(rows["x71-dec-aspp"].split()[4][:-1]) > float(rows["x65-dec-aspp"].split()[4][:-1])
    assert "Multiply-Adds at 1025×2049" in out and "4 trainings, 4 evaluations" in out


def test_xception71_is_the_official_xception_71():
    """timm's aligned xception71 = the official block list; taps where `networks_to_feature_maps` reads them."""
    backbone = build_backbone("xception71")
    blocks = backbone.body.blocks
    assert [(b.stack.conv3.conv_pw.out_channels, b.stack.conv3.conv_dw.stride[0]) for b in blocks] == OFFICIAL_UNITS
    assert backbone.channels == {"stride4": 256, "stride8": 728, "out": 2048}
    names = {o.name for o in backbone.official_names().values()}
    assert "xception_71/entry_flow/block5/unit_1/xception_module/shortcut/weights" in names
    assert len(names) == len(backbone.state_dict()) - sum(k.endswith("num_batches_tracked")
                                                           for k in backbone.state_dict())

    def stride(i):
        return blocks[i].stack.conv3.conv_dw.stride[0]

    def dil(i):
        return blocks[i].stack.conv2.conv_dw.dilation[0]

    backbone.set_output_stride(16)
    assert [stride(i) for i in (0, 2, 4, 21)] == [2, 2, 2, 1] and dil(21) == 1 and dil(22) == 2
    backbone.set_output_stride(8)
    assert [stride(i) for i in (0, 2, 4, 21)] == [2, 2, 1, 1] and dil(4) == 1 and dil(5) == 2 and dil(22) == 4
    # the stride-4 tap: the pre-activation pointwise output of entry block 3's second separable conv (block 2,
    # at stride 1, is not tapped, unlike Xception-65's block 2)
    x = torch.randn(1, 3, 33, 33)
    backbone.eval()
    with torch.no_grad():
        taps = backbone(x)
        h = blocks[1](blocks[0](backbone.body.stem(x)))
        stack = blocks[2].stack
        expected = stack.conv2(stack.act2(stack.conv1(stack.act1(h))))
    assert torch.equal(taps["stride4"], expected) and (taps["stride4"] < 0).any()


def test_xception71_fixture_is_the_official_graphs():
    """The manifest the official graph wrote names exactly the variables our network maps to (backbone and head)."""
    manifest = json.loads((OFFICIAL / "fixtures" / "xception71.manifest.json").read_text())
    net = build_on_meta(lambda: DeepLabV3Plus("xception71", aspp_separable=True, decoder_separable=True))
    assert {v["name"] for v in manifest} == {o.name for o in net.official_names().values()}


def test_smoke_table7_on_generated_cityscapes(tmp_path, jobs_in_process, wandb_disabled, capsys):
    """`--profile smoke`: one row, trained and scored on the generated Cityscapes tree; the table is written."""
    root, out = tmp_path / "cityscapes", tmp_path / "results"
    assert main(table7_cityscapes.TABLE, ["--profile", "smoke", "--rows", "x65-dec-aspp", "--data-root", str(root),
                                          "--out", str(out)]) == 0
    assert (root / "leftImg8bit" / "val").is_dir() and (root / "gtFine" / "train").is_dir()
    rows = list(csv.DictReader(open(out / "table7_cityscapes-smoke.csv")))
    assert [(r["row"], r["seeds"], r["paper_mIoU"]) for r in rows] == [("x65-dec-aspp", "1", "79.14")]
    assert 0 <= float(rows[0]["ours_mIoU"]) <= 100
    md = (out / "table7_cityscapes-smoke.md").read_text()
    assert "| x65-dec-aspp | 79.14% | " in md
    # each small image is scored on its own canvas; the counts are at the paper's 513×513
    assert "Multiply-Adds at 513×513 (the runs score each image on its own aligned canvas)" in md
    assert "Smoke profile: mobilenet_v2 from scratch" in md


def test_an_xception71_fit_resumes_exactly(voc_root, tmp_path):
    """SIGTERM when step 1 starts (the step-2 checkpoint is saved, exit 143), `--ckpt_path last` to step 3: the
    same weights as 3 uninterrupted steps, as the other backbones' runs resume (tests/test_training.py)."""
    import signal

    from helpers import run_cli, run_in_process, tiny_args

    xception71 = ["--model.net.init_args.backbone=xception71", "--trainer.precision=32-true",
                  "--data.crop_size=33", "--data.batch_size=2", "--trainer.limit_val_batches=0"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_in_process("fit", *tiny_args(voc_root, straight, 3), *xception71)
    stop = json.dumps({"class_path": "helpers.SignalAtStep", "init_args": {"step": 1, "signum": int(signal.SIGTERM)}})
    stopped = run_cli("fit", *tiny_args(voc_root, interrupted, 3), *xception71, f"--trainer.callbacks+={stop}",
                      check=False)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run_in_process("fit", *tiny_args(voc_root, interrupted, 3), *xception71, "--ckpt_path=last")
    a, b = (torch.load(next(run.rglob("last.ckpt")), map_location="cpu", weights_only=True)
            for run in (straight, interrupted))
    assert a["global_step"] == b["global_step"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
