"""The GPU check's code path in its small mode on the CPU, kept cheap: the two
measuring parts on MobileNetV2 (Lightning vs bare loop, the per-backbone table). predict/export and SyncBN have
tests elsewhere (test_use_model.py, test_distributed.py); SyncBN numerics need a GPU (no CPU kernel)."""
from __future__ import annotations

import json

from experiments.measure import device_check
from helpers import ROOT


def test_device_check_small_mode_runs_every_part(voc_small, tmp_path, monkeypatch, capsys):
    out = tmp_path / "check"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(ROOT)
    assert device_check.main(["--small", "--out", str(out), "--data-root", str(voc_small), "--backbones",
                              "mobilenet_v2", "--parts", "lightning,backbones,compile"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "device_check.json").read_text())
    parts = report["parts"]
    for name in ("lightning", "backbones"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    for name in ("predict_export", "syncbn"):
        assert parts[name]["status"] == "skipped: not in --parts", (name, parts[name])
    assert parts["compile"]["status"] == "skipped: torch.compile runs in the GPU mode only"
    train = parts["lightning"]["result"]["train"]
    assert set(train["phases"]) == {"bare (before)", "lightning", "bare (after)", "loader"}
    assert train["validation_s"]["bare"] > 0 and train["validation_s"]["lightning"] > 0  # stalls in the window
    assert train["logged_images_per_s"] > 0 and train["ratio_steady"] > 0
    assert set(parts["backbones"]["result"]) == {"mobilenet_v2"}
    table = (out / "device_check.md").read_text()
    assert table == stdout[-len(table):]
    for header in ("| part | status | seconds |",
                   "| loop | steady ms/step | mean img/s | peak MB | MFU | epoch boundary ms | validation s |",
                   "| backbone | GFLOP/train image | train img/s | train peak MB | MFU | logged / wall img/s | "
                   "eval OS16 ms/image | eval OS8 MS+flip ms/image | eval peak MB |"):
        assert header in table, header
