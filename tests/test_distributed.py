"""Two-process DDP on CPU (gloo) scores the val set like one process; SyncBN conversion."""
from __future__ import annotations

import textwrap

import pytest

from lightning_modules.run.wandb_offline import read_runs
from helpers import run_cli, run_in_process, tiny_args


def test_syncbn_conversion_keeps_the_checkpoint_format():
    """What `trainer.sync_batchnorm` does on GPUs: every BN becomes SyncBatchNorm, state dict unchanged."""
    from lightning.pytorch.plugins import TorchSyncBatchNorm
    from torch import nn

    from lightning_modules.components import DeepLabV3Plus

    net = DeepLabV3Plus("mobilenet_v2")
    keys = list(net.state_dict())
    synced = TorchSyncBatchNorm().apply(net)
    types = {type(m) for m in synced.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm))}
    assert types == {nn.SyncBatchNorm} and list(synced.state_dict()) == keys


def test_ddp_two_processes_same_miou_as_single_process_and_syncbn(voc_small, tmp_path):
    bn_file = tmp_path / "bn.txt"
    extra = tmp_path / "ddp.yaml"
    extra.write_text(textwrap.dedent(f"""
        trainer:
          callbacks:
            - class_path: lightning_modules.run.checkpoints.StepCheckpoint
              init_args: {{save_last: true}}
            - class_path: helpers.RecordBatchNormTypes
              init_args: {{path: {str(bn_file)!r}}}
    """))
    run_dir = tmp_path / "ddp"
    full_val = "--trainer.limit_val_batches=1.0"  # every val image (small ones, on their own canvas)
    small = ["--model.eval_canvas=null"]
    run_cli("fit", *tiny_args(voc_small, run_dir, max_steps=4), full_val, *small, f"--config={extra}",
            "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.batch_size=4")
    # PyTorch's SyncBatchNorm is GPU-only, so a CPU run keeps per-process BN (and says so)
    assert bn_file.read_text().split() == ["BatchNorm2d"]
    (ddp_run,) = read_runs(run_dir)
    (_, ddp_miou), = ddp_run.metric("val/mIoU")

    eval_dir = tmp_path / "single"
    run_in_process("validate", *tiny_args(voc_small, eval_dir), full_val, *small,
                   f"--ckpt_path={next(run_dir.rglob('last.ckpt'))}")
    (single,) = read_runs(eval_dir)
    assert single.metric("val/mIoU")[0][1] == pytest.approx(ddp_miou, abs=1e-6)
    # data.batch_size is the global batch: 2 images per process, 4 per step, 4 steps
    assert ddp_run.config["global_batch_size"] == 4 and ddp_run.config["per_process_batch_size"] == 2
    assert ddp_run.summary["trainer/global_step"] in (3, 4)
