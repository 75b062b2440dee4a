"""The LightningModule, evaluation protocol, W&B, checkpoints and exact resume."""
from __future__ import annotations

import json
import os
import random
import textwrap

import lightning as L
import pytest
import torch

from datamodules.voc_datamodule import VOCDataModule
from lightning_modules.run.wandb_offline import read_runs
from helpers import run_cli, run_in_process, tiny_args
from lightning_modules.run.checkpoints import read_step
from lightning_modules.components import DeepLabV3Plus
from lightning_modules.metrics import SegmentationMetrics
from lightning_modules.run.record import read_records, read_results
from lightning_modules.segmentation import SegmentationModule
from lightning_modules.run.wandb_logger import wandb_offline


def test_fit_then_validate_from_checkpoint_same_miou(voc_root, voc_small, tmp_path, caplog):
    """Three runs in this process (the killed and stopped ones below have processes of their own)."""
    run_dir = tmp_path / "run"
    run_in_process("fit", *tiny_args(voc_root, run_dir, max_steps=4))
    (train_run,) = read_runs(run_dir)
    assert train_run.job_type == "train" and train_run.tags == ["quickstart"]
    assert train_run.config["git_commit"] and train_run.config["packages"]["torch"] == torch.__version__.split("+")[0]
    assert train_run.config["config"]["model"]["net"]["init_args"]["backbone"] == "mobilenet_v2"
    (step, fit_miou), = train_run.metric("val/mIoU")
    assert train_run.summary["val/mIoU"]["max"] == pytest.approx(fit_miou)
    assert read_results(run_dir)["fit"]["metrics"]["val/mIoU"] == pytest.approx(fit_miou)  # the run record's figure
    for key in ("speed/multiply_adds", "speed/multiply_adds_tf", "speed/parameters", "speed/train_images_per_s",
                "speed/eval_images_per_s", "speed/eval_ms_per_image", "speed/train_peak_memory_mb",
                "speed/eval_peak_memory_mb", "train/loss", "lr-SGD/decay", "lr-SGD/no_decay", "speed/train_ms_per_step",
                "speed/data_wait_ms_per_step", "speed/compute_ms_per_step"):
        assert train_run.metric(key), key
    assert any(k.startswith("val/iou/") for row in train_run.history for k in row)
    media = {k.split("/")[1] for row in train_run.history for k in row if k.startswith("val/") and "/_type" in k}
    assert media == {"predictions", "confusion_matrix"}
    checkpoints = {p.name for p in run_dir.rglob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)

    last = next(run_dir.rglob("last.ckpt"))
    eval_dir = tmp_path / "eval"
    caplog.clear()
    run_in_process("validate", *tiny_args(voc_root, eval_dir), f"--ckpt_path={last}",
            "--trainer.logger.init_args.job_type=eval")
    assert "Run folder moved" not in caplog.text  # another run's checkpoint, scored: nothing moved
    (eval_run,) = read_runs(eval_dir)
    assert eval_run.job_type == "eval"
    assert eval_run.metric("val/mIoU")[0][1] == pytest.approx(fit_miou, abs=1e-6)

    ms_dir = tmp_path / "eval-ms"
    # the paper's multi-scale protocol (12 network passes at output stride 8) on one small image, on its own
    # canvas (the logged Multiply-Adds are the protocol's on 513×513, whatever the images)
    run_in_process("validate", *tiny_args(voc_small, ms_dir, **{"trainer.limit_val_batches": "1"}),
                   f"--ckpt_path={last}", "--model.eval_output_stride=8", "--model.eval_canvas=null",
                   "--model.eval_scales=[0.5,0.75,1.0,1.25,1.5,1.75]", "--model.eval_flip=true")
    (ms_run,) = read_runs(ms_dir)
    assert ms_run.metric("val/mIoU") and ms_run.summary["speed/multiply_adds"] > 12 * eval_run.summary["speed/multiply_adds"]


RESUME_CONFIG = """
trainer:
  callbacks:
    - class_path: lightning_modules.run.checkpoints.StepCheckpoint
      init_args: {{filename: "step-{{step}}", every_n_train_steps: {every}, save_top_k: -1, save_last: true,
                  enable_version_counter: false, auto_insert_metric_name: false}}
{kill}
"""


#: 56 trainaug samples / batch 4 = 14 steps per epoch; a checkpoint every 7 steps; one validation, after step 24
TOTAL = 32
VALIDATED = 24
COMMON = ["--data.num_workers=2", "--data.persistent_workers=false", "--trainer.limit_val_batches=2",
          f"--trainer.val_check_interval={VALIDATED}"]


def resume_config(directory, name: str, kill: int | None = None, killer: str = "KillAtStep") -> str:
    """`killer`: KillAtStep (when step `kill` starts) or KillAfterCheckpoint (right after the step checkpoint
    of step `kill` is written, before Lightning logs the batch that led to it)."""
    path = directory / f"{name}.yaml"
    path.write_text(RESUME_CONFIG.format(every=7, kill="" if kill is None else textwrap.indent(
        f"- class_path: helpers.{killer}\n  init_args: {{step: {kill}}}", "    ")))
    return f"--config={path}"


@pytest.fixture(scope="module")
def straight(voc_root, tmp_path_factory):
    """TOTAL steps in one uninterrupted run: the reference every interrupted-and-resumed run must equal."""
    work = tmp_path_factory.mktemp("straight")
    run_in_process("fit", *tiny_args(voc_root, work / "run", TOTAL), *COMMON, resume_config(work, "plain"))
    return work / "run"


def assert_same_training(straight, interrupted, processes: int) -> None:
    """Bitwise the same weights and LR as the uninterrupted run, one W&B run, every step's loss logged once."""
    a = torch.load(next(straight.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    b = torch.load(next(interrupted.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == TOTAL
    assert a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == b["optimizer_states"][0]["param_groups"][0]["lr"]

    runs = read_runs(interrupted)  # one offline file per process, all of the same W&B run
    assert len(runs) == processes and len({run.run_id for run in runs}) == 1
    losses_straight = dict(read_runs(straight)[0].metric("train/loss"))
    assert sorted(losses_straight) == list(range(TOTAL))
    # wandb-core buffers offline records and a SIGKILLed process loses its unflushed tail: the resumed
    # one re-sends it from metrics.jsonl, so together they hold every step once, as logged
    logged = [row for run in runs for row in run.metric("train/loss")]
    assert sorted(s for s, _ in logged) == list(range(TOTAL))
    assert all(loss == losses_straight[s] for s, loss in logged)
    records = [r["step"] for r in read_records(interrupted / "metrics.jsonl") if "train/loss" in r["metrics"]]
    assert sorted(records) == list(range(TOTAL))
    # the validation, stopped half-way by SIGTERM and done again on resume: logged once, as in the straight run
    (step, miou), = read_runs(straight)[0].metric("val/mIoU")
    assert step == VALIDATED - 1
    assert [(r["step"], r["metrics"]["val/mIoU"]) for r in read_records(interrupted / "metrics.jsonl")
            if "val/mIoU" in r["metrics"]] == [(step, pytest.approx(miou))]
    assert [pair for run in runs for pair in run.metric("val/mIoU")] == [(step, pytest.approx(miou))]


def test_exact_resume_after_kills_at_an_epoch_end_and_mid_epoch_and_sigterms(voc_root, tmp_path, straight):
    """N steps in one run == the same steps SIGKILLed at an epoch end, stopped by SIGTERM at a random step (sent
    again while its checkpoint is written), SIGKILLed mid-epoch right after a step checkpoint is written (before
    Lightning logs that batch), stopped by SIGTERM during a validation, and resumed each time: same weights,
    losses, validation and W&B run, every step logged once, and `last.ckpt` is the final step with no
    `last-v1.ckpt` beside it. The SIGTERM that stops the step a validation follows (24) makes the resumed run
    validate first: the next run gets its SIGTERM in that validation."""
    # Killed at step 14 (its checkpoint closed epoch 0: the saved loader position is spent) and at step 21
    # (mid-epoch 1); SIGTERM between them, where no periodic checkpoint falls, and in the validation after 24.
    seed = int(os.environ.get("TEST_SEED", random.SystemRandom().randrange(2**32)))
    term = random.Random(seed).randrange(14, 20)
    print(f"SIGTERM when step {term} starts (seed {seed}; rerun with TEST_SEED={seed})")
    interrupted = tmp_path / "interrupted"
    preemption = "--trainer.callbacks+=lightning_modules.run.preemption.Preemption"
    resume: list[str] = []
    for kill in (14, "term", 21, "term_before_validation", "term_in_validation"):
        if kill == "term_before_validation":
            callback = json.dumps({"class_path": "helpers.SignalAtStep", "init_args": {"step": VALIDATED - 1}})
            extra = [resume_config(tmp_path, "plain"), preemption, f"--trainer.callbacks+={callback}"]
        elif kill == "term":
            callback = json.dumps({"class_path": "helpers.SignalAtStep", "init_args": {"step": term}})
            extra = [resume_config(tmp_path, "plain"), preemption, f"--trainer.callbacks+={callback}"]
        elif kill == "term_in_validation":
            callback = json.dumps({"class_path": "helpers.SignalInValidation", "init_args": {"step": VALIDATED}})
            extra = [resume_config(tmp_path, "plain"), preemption, f"--trainer.callbacks+={callback}"]
        elif kill == 21:
            extra = [resume_config(tmp_path, f"kill{kill}", kill, killer="KillAfterCheckpoint")]
        else:
            extra = [resume_config(tmp_path, f"kill{kill}", kill)]
        run = run_cli("fit", *tiny_args(voc_root, interrupted, TOTAL), *COMMON, *extra, *resume, check=False)
        resume = ["--ckpt_path=last"]
        if kill == "term":  # exit 143 as a shell reports SIGTERM, one line naming a complete checkpoint
            assert run.returncode == 143, run.stderr[-3000:]
            saved = interrupted / f"hpc_ckpt_{term + 1}.ckpt"
            assert (f"Signal SIGTERM: saved {saved} at step {term + 1}; resume with --ckpt_path last"
                    in run.stdout + run.stderr), run.stderr[-3000:]
            assert read_step(saved) == term + 1 and read_results(interrupted)["fit"]["finished"] is False
            continue
        if kill == "term_before_validation":  # stopped before the validation due after step 24
            assert run.returncode == 143, run.stderr[-3000:]
            saved = interrupted / f"hpc_ckpt_{VALIDATED}.ckpt"
            assert (f"Signal SIGTERM (the validation due at this step runs on resume): saved {saved} at step "
                    f"{VALIDATED}; resume with --ckpt_path last" in run.stdout + run.stderr), run.stderr[-3000:]
            assert not any("val/mIoU" in r["metrics"] for r in read_records(interrupted / "metrics.jsonl"))
            continue
        if kill == "term_in_validation":  # in the validation the resumed run does first, not after it
            assert run.returncode == 143, run.stderr[-3000:]
            saved = interrupted / f"hpc_ckpt_{VALIDATED}.ckpt"
            assert (f"Signal SIGTERM during validation (it runs again on resume): saved {saved} at step "
                    f"{VALIDATED}; resume with --ckpt_path last" in run.stdout + run.stderr), run.stderr[-3000:]
            assert "Traceback" not in run.stderr and read_step(saved) == VALIDATED
            assert not any("val/mIoU" in r["metrics"] for r in read_records(interrupted / "metrics.jsonl"))
            continue
        assert run.returncode == -9, run.stderr[-2000:]
        assert max(int(p.stem.split("-")[1]) for p in interrupted.rglob("step-*.ckpt")) == kill
        if kill == 21:  # killed before the loss of the batch that led to the step-21 checkpoint was logged
            assert not [r for r in read_records(interrupted / "metrics.jsonl")
                        if r["step"] == kill - 1 and "train/loss" in r["metrics"]]
    run_in_process("fit", *tiny_args(voc_root, interrupted, TOTAL), *COMMON, resume_config(tmp_path, "plain"), *resume)
    assert_same_training(straight, interrupted, processes=6)
    assert sorted(p.name for p in interrupted.rglob("last*.ckpt")) == ["last.ckpt"]


def test_a_sigterm_where_an_epoch_ends_and_a_validation_is_due_resumes_into_it(voc_root, tmp_path, caplog):
    """56 samples in batches of 8: epoch 0 ends at step 7, where the validation falls too. SIGTERM when step 6
    starts stops after step 7; the resumed run validates first, crosses into epoch 1 and ends as a straight
    run: same weights, the same validation once, every loss once (all three runs in this process)."""
    common = ["--data.batch_size=8", "--trainer.val_check_interval=7", "--trainer.limit_val_batches=1"]
    run_in_process("fit", *tiny_args(voc_root, tmp_path / "straight", 10), *common)
    stopped = tmp_path / "stopped"
    stop = json.dumps({"class_path": "helpers.SignalAtStep", "init_args": {"step": 6}})
    with pytest.raises(SystemExit) as exit_:
        run_in_process("fit", *tiny_args(voc_root, stopped, 10), *common, f"--trainer.callbacks+={stop}")
    assert exit_.value.code == 143
    assert "Signal SIGTERM (the validation due at this step runs on resume)" in caplog.text
    assert read_step(stopped / "hpc_ckpt_7.ckpt") == 7
    run_in_process("fit", *tiny_args(voc_root, stopped, 10), *common, "--ckpt_path=last")

    a, b = (torch.load(next(run.rglob("last.ckpt")), map_location="cpu", weights_only=False)
            for run in (tmp_path / "straight", stopped))
    assert a["global_step"] == b["global_step"] == 10 and a["epoch"] == b["epoch"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    straight_records, stopped_records = (read_records(run / "metrics.jsonl") for run in (tmp_path / "straight", stopped))
    (validation,) = [(r["step"], r["metrics"]["val/mIoU"]) for r in straight_records if "val/mIoU" in r["metrics"]]
    assert validation[0] == 6
    assert [(r["step"], r["metrics"]["val/mIoU"]) for r in stopped_records if "val/mIoU" in r["metrics"]] == [
        (6, pytest.approx(validation[1]))]
    assert sorted(r["step"] for r in stopped_records if "train/loss" in r["metrics"]) == list(range(10))


def test_wandb_goes_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_offline()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    from lightning_modules.run import wandb_logger

    monkeypatch.setattr(wandb_logger, "server_unreachable", lambda: None)  # a server that answers
    assert not wandb_offline()
    monkeypatch.setattr(wandb_logger, "server_unreachable", lambda: "api.wandb.ai:443: timed out")  # none
    assert wandb_offline()
    monkeypatch.setattr(wandb_logger, "server_unreachable", lambda: None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()


def test_miou_from_one_confusion_matrix():
    metric = SegmentationMetrics(num_classes=3, ignore_index=255)
    metric.update(torch.tensor([0, 0, 1, 1, 2, 0]), torch.tensor([0, 1, 1, 1, 255, 0]))
    metric.update(torch.tensor([2]), torch.tensor([2]))
    scores = SegmentationMetrics.scores(metric.compute())
    # class 0: tp 2, fp 1, fn 0 → 2/3; class 1: tp 2, fn 1 → 2/3; class 2: 1/1
    assert scores["iou"].tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert scores["mIoU"].item() == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert scores["pixel_accuracy"].item() == pytest.approx(5 / 6)


def test_normalization_must_match_the_weights(voc_root, tmp_path):
    import torchvision

    weights = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), weights)
    module = SegmentationModule(DeepLabV3Plus("mobilenet_v2", weights=str(weights)))
    data = VOCDataModule(root=str(voc_root), normalization="inception", crop_size=65, batch_size=2, num_workers=0)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="data.normalization='inception'.*expect 'imagenet'"):
        trainer.fit(module, data)
