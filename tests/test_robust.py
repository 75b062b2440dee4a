"""Nothing lost on a kill (metrics record, W&B history, checkpoints), every user mistake one line."""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules import synthetic, voc_datamodule
from datamodules.voc import DatasetError, list_split, voc_dir
from datamodules.voc_datamodule import VOCDataModule
from experiments import export, predict, train
from lightning_modules.run.wandb_offline import read_runs
from helpers import ROOT, console_of_run, fit_args, run_cli, tiny_args
from lightning_modules.run.checkpoints import CheckpointError, read_step, resolve_ckpt_path
from lightning_modules.run.record import read_records, read_results


def _steps(pairs) -> Counter:
    return Counter(step for step, _ in pairs)


def test_a_kill_after_a_validation_loses_no_logged_step(voc_root, tmp_path, request):
    """SIGKILL from outside right after a validation, before the next checkpoint; resume with `last`: the
    run's metrics.jsonl and its W&B offline history hold every train/loss step and validation once."""
    run_dir, total = tmp_path / "run", 8
    args = [*tiny_args(voc_root, run_dir, total), "--trainer.val_check_interval=3", "--trainer.limit_val_batches=2",
            "--checkpoint_every_n_train_steps=4"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", "fit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    # the second validation (after step 6) is logged: the step-4 checkpoint exists, the next is the final one
    while not any("val/mIoU" in r["metrics"] and r["step"] >= 5 for r in read_records(run_dir / "metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -9
    assert read_results(run_dir)["fit"] == {"finished": False}  # the killed stage is marked as such
    assert sorted(p.name for p in run_dir.rglob("*.ckpt") if p.name.startswith("step-")) == ["step-4.ckpt"]

    resumed = console_of_run(request, "fit", *args, "--ckpt_path=last")  # in this process
    assert "step 4" in resumed

    def history(pairs_by_key):
        return {key: _steps(pairs) for key, pairs in pairs_by_key.items()}

    records = read_records(run_dir / "metrics.jsonl")
    jsonl = history({k: [(r["step"], r["metrics"][k]) for r in records if k in r["metrics"]]
                     for k in ("train/loss", "val/mIoU")})
    runs = read_runs(run_dir)
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id
    assert not runs[0].finished and runs[1].finished  # wandb's exit record: the killed process never wrote it
    wandb = history({k: runs[0].metric(k) + runs[1].metric(k) for k in ("train/loss", "val/mIoU")})
    for name, logged in (("metrics.jsonl", jsonl), ("W&B", wandb)):
        assert logged["train/loss"] == Counter(range(total)), name
        assert sorted(logged["val/mIoU"].elements()) == [2, 5], name  # each validation exactly once
    # the same values in both: the killed process's rows W&B kept equal the resumed run's (exact resume)
    jsonl_losses = {r["step"]: r["metrics"]["train/loss"] for r in records if "train/loss" in r["metrics"]}
    assert dict(runs[0].metric("train/loss") + runs[1].metric("train/loss")) == pytest.approx(jsonl_losses)

    results = read_results(run_dir)["fit"]
    assert results["finished"] and results["step"] == total and results["wandb_run_id"] == runs[0].run_id
    assert Path(results["checkpoint"]).name == "last.ckpt" and results["git_commit"]
    assert results["metrics"]["val/mIoU"] == wandb_last(runs, "val/mIoU")
    assert results["config"]["model"]["net"]["init_args"]["backbone"] == "mobilenet_v2"


def wandb_last(runs, key):
    return [v for run in runs for _, v in run.metric(key)][-1]


def test_checkpoints_land_atomically_with_tmpdir_on_another_filesystem(tmp_path):
    """Killed at random moments while writing through AtomicCheckpointIO with TMPDIR=/dev/shm: the
    checkpoint is always a complete file, nothing is written to TMPDIR, and the temp file a killed writer
    leaves beside the checkpoint is removed by the next writer."""
    shm = Path("/dev/shm") / f"ckpt-test-{os.getpid()}"
    shm.mkdir()
    target = tmp_path / "ckpt" / "last.ckpt"
    script = textwrap.dedent(f"""
        import torch
        from lightning_modules.run.checkpoints import AtomicCheckpointIO
        io, big, i = AtomicCheckpointIO(), torch.randn(10_000_000), 0
        while True:
            i += 1
            io.save_checkpoint({{"global_step": i, "weights": big}}, {str(target)!r})
    """)
    try:
        for delay in (0.13, 0.37):
            started = time.time()
            proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                                    env={**os.environ, "TMPDIR": str(shm), "PYTHONPATH": str(ROOT)})
            while not (target.exists() and target.stat().st_mtime > started):  # this writer has saved once
                assert proc.poll() is None and time.time() < started + 120
                time.sleep(0.02)
            strays = [p.name for p in target.parent.iterdir() if p.name != "last.ckpt"]
            assert all(f".{proc.pid}." in name for name in strays), strays  # the previous writer's is gone
            time.sleep(delay)
            proc.kill()
            proc.wait()
            assert list(shm.iterdir()) == []
            assert torch.load(target, weights_only=True)["global_step"] >= 1
    finally:
        for p in shm.iterdir():
            p.unlink()
        shm.rmdir()


def test_last_is_the_highest_recorded_step_and_explicit_paths_are_checked(tmp_path):
    ckpts = tmp_path / "ckpt"
    ckpts.mkdir()
    for name, step in (("step-20.ckpt", 20), ("hpc_ckpt_30.ckpt", 30), ("step-10.ckpt", 10)):
        torch.save({"global_step": step}, ckpts / name)
    os.utime(ckpts / "step-10.ckpt")  # newest file time, oldest step (copied back from a backup)
    assert resolve_ckpt_path("last", tmp_path) == str(ckpts / "hpc_ckpt_30.ckpt")
    (ckpts / "hpc_ckpt_30.ckpt").write_bytes((ckpts / "hpc_ckpt_30.ckpt").read_bytes()[:100])
    with pytest.warns(UserWarning, match="hpc_ckpt_30.ckpt: unreadable checkpoint"):
        assert resolve_ckpt_path("last", tmp_path) == str(ckpts / "step-20.ckpt")
    with pytest.raises(CheckpointError, match="hpc_ckpt_30.ckpt: unreadable"):
        resolve_ckpt_path(str(ckpts / "hpc_ckpt_30.ckpt"), tmp_path)
    with pytest.raises(CheckpointError, match="nope.ckpt: no such checkpoint"):
        resolve_ckpt_path(str(ckpts / "nope.ckpt"), tmp_path)
    assert resolve_ckpt_path("last", tmp_path / "empty") is None


def test_generated_data_announces_itself_and_never_mixes_into_other_files(tmp_path, capsys, monkeypatch):
    small = functools.partial(synthetic.generate, n_voc_train=2, n_voc_val=3, n_sbd_only=2)
    monkeypatch.setattr(voc_datamodule.synthetic, "generate", small)  # the same writer, fewer images
    occupied = tmp_path / "mydata"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("something else")
    with pytest.raises(DatasetError, match=f"{occupied}: data.generate would write"):
        VOCDataModule(root=str(occupied), generate=True).prepare_data()
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    fresh = tmp_path / "new" / "voc"
    VOCDataModule(root=str(fresh), generate=True).prepare_data()
    assert capsys.readouterr().out.strip().splitlines() == [
        f"data.generate: writing the generated VOC-format dataset to {fresh} (not real VOC data)"]
    assert len(list_split(fresh, "val")) == 3 and sorted(p.name for p in fresh.parent.iterdir()) == ["voc"]


def test_empty_or_dangling_split_files_are_errors_naming_them(voc_copy):
    lists = voc_dir(voc_copy) / "ImageSets" / "Segmentation"
    (voc_dir(voc_copy) / "JPEGImages" / "2007_000031.jpg").unlink()  # a val image
    with pytest.raises(DatasetError, match=rf"{lists / 'val.txt'}: lists 2007_000031 but .*2007_000031.jpg does not"):
        list_split(voc_copy, "val")
    (lists / "train.txt").write_text("\n")  # trainaug must not train on SBD alone
    with pytest.raises(DatasetError, match=rf"{lists / 'train.txt'}: empty split file"):
        list_split(voc_copy, "trainaug")


def _bad_checkpoint(tmp_path) -> Path:
    path = tmp_path / "truncated.ckpt"
    torch.save({"global_step": 3, "w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def _empty_train_list(voc_copy) -> Path:
    path = voc_dir(voc_copy) / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text("")
    return path


def _corrupt_image(voc_copy) -> Path:
    path = voc_dir(voc_copy) / "JPEGImages" / "2007_000030.jpg"  # the first val image
    path.write_bytes(path.read_bytes()[:200])
    return path


def _unwritable_dir(tmp_path) -> Path:
    """A directory this process cannot write to: read-only by mode, or (root ignores modes) a read-only mount."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("a read-only directory for root needs a read-only mount")
    return path


def _with_other_net_config(ckpt: Path, tmp_path) -> Path:
    """The parts of the checkpoint `load_model` reads, its recorded network changed (decoder off) and its
    weights left as they are."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    path = tmp_path / "edited.ckpt"
    torch.save({"net_config": {**checkpoint["net_config"], "decoder": "none"}, "labels": checkpoint["labels"],
                "state_dict": checkpoint["state_dict"]}, path)
    return path


CONFIG_KEY_TYPO, BAD_YAML = "trainer:\n  max_step: 3\n", "trainer:\n  max_steps: 3\n  callbacks: [a, b\nmodel:\n  lr: 0.1\n"


@pytest.mark.parametrize("case", [
    "lr", "eval_scales", "batch_size", "batch_over_split", "batch_type", "crop", "backbone", "multi_grid",
    "official_layers", "precision", "unknown_option",
    "config_key", "config_yaml", "num_classes", "ckpt_interval", "truncated_ckpt", "missing_ckpt", "ckpt_classes",
    "ckpt_backbone", "ckpt_decoder", "init_from_backbone", "weights_tag", "weights_offline", "occupied_root",
    "empty_split", "worker_error", "predict_output_file", "predict_unfit_ckpt", "export_suffix", "export_unwritable"])
def test_user_errors_print_one_line_naming_the_option_or_file(case, voc_root, voc_copy, shapes_run, tmp_path, capfd,
                                                             monkeypatch):
    """Every mistake exits before training with one line naming the option or file and what was expected;
    an option, config, checkpoint or output path is refused before anything is created."""
    run_dir = tmp_path / "run"
    root = voc_copy if case in ("empty_split", "worker_error") else voc_root
    args = ["fit", *tiny_args(root, run_dir)]
    cli, created = train.main, run_dir
    shapes_root, _, ckpt = shapes_run
    config = tmp_path / "mine.yaml"
    expected = {
        "lr": (["--model.lr=-0.01"], "--model.lr: expected a learning rate > 0"),
        "eval_scales": (["--model.eval_scales=[]"], "--model.eval_scales: expected one or more scales > 0, got []"),
        "batch_size": (["--data.batch_size=0"], "--data.batch_size: expected a batch size >= 1"),
        "batch_over_split": (["--data.batch_size=100"], "--data.batch_size: expected at most 56, the samples of trainaug; got 100"),
        "batch_type": (["--data.batch_size=four"], "--data.batch_size: Expected a int. Got value: four"),
        "crop": (["--data.crop_size=8"], "--data.crop_size: expected a crop of at least the output stride (16 px)"),
        "backbone": (["--model.net.init_args.backbone=resnet18"], "--model.net.init_args.backbone: expected one of"),
        "multi_grid": (["--model.net.init_args.multi_grid=[1,2,4]"], "--model.net.init_args.multi_grid: expected null "
                       "with 'mobilenet_v2' (multi-grid is a ResNet setting: resnet50, resnet101, resnet50_beta, "
                       "resnet101_beta), got [1, 2, 4]"),
        "official_layers": (["--model.net.init_args.backbone=resnet50", "--model.net.init_args.official_layers=true"],
                            "--model.net.init_args.official_layers: expected false with 'resnet50'"),
        "precision": (["--trainer.precision=17"], "--trainer.precision: expected one of 64, 32, 16, transformer-engine, "
                      "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16, "
                      "null; given value: 17"),
        "unknown_option": (["--data.batch_sze=4"], "unrecognized arguments: --data.batch_sze=4; did you mean "
                           "--data.batch_size?"),
        "config_key": ([f"--config={config}"], f"{config}: unknown key trainer.max_step; did you mean trainer.max_steps?"),
        "config_yaml": ([f"--config={config}"], f"{config}: not valid YAML at line 4, column 6: expected ',' or ']', "
                        "but got ':' (while parsing a flow sequence, line 3)"),
        "num_classes": (["--model.net.init_args.num_classes=5"], "--model.net.init_args.num_classes: num_classes 5 was "
                        f"given but the dataset (datamodules.voc_datamodule.VOCDataModule, {voc_root}) has 21 classes"),
        "ckpt_interval": (["--checkpoint_train_time_interval=30min"], "--checkpoint_train_time_interval: expected H:MM:SS"),
        "ckpt_classes": ([f"--ckpt_path={ckpt}"], f"{ckpt} (--ckpt_path): another network than the config's: "
                         "checkpoint num_classes=5; config num_classes=21; expected the config the checkpoint was "
                         "trained with"),
        "ckpt_backbone": (["--model.net.init_args.backbone=resnet50", f"--ckpt_path={ckpt}"],
                          f"{ckpt} (--ckpt_path): another network than the config's: checkpoint backbone=mobilenet_v2 "
                          "num_classes=5; config backbone=resnet50 num_classes=21"),
        "init_from_backbone": (["--model.net.init_args.backbone=resnet50", f"--model.init_from={ckpt}"],
                               f"{ckpt} (--model.init_from): another network than the config's: checkpoint "
                               "backbone=mobilenet_v2; config backbone=resnet50; expected a checkpoint of the same backbone"),
        "weights_tag": (["--model.net.init_args.backbone=xception65", "--model.net.init_args.weights=tf_in22k"],
                        "--model.net.init_args.weights: unknown xception65 weights 'tf_in22k': expected one of "),
        "weights_offline": (["--model.net.init_args.weights=IMAGENET1K_V2"],
                            "--model.net.init_args.weights: cannot download mobilenet_v2 weights 'IMAGENET1K_V2' ("),
    }
    if case in expected:
        extra, message = expected[case]
        config.write_text(CONFIG_KEY_TYPO if case == "config_key" else BAD_YAML)
        if case == "weights_offline":  # a machine without internet and with an empty weights cache
            monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
            monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
            message += ('); on a machine with internet save them with torch.save(torchvision.models.mobilenet_v2('
                        'weights="IMAGENET1K_V2").state_dict(), "mobilenet_v2.pth") and give that file instead')
            message = message.split(" (", 1)[0]
        if case.startswith("ckpt_") and case != "ckpt_interval":
            args[0] = "validate" if case == "ckpt_backbone" else "fit"
    elif case == "ckpt_decoder":  # the checkpoint's own dataset, another decoder
        args = fit_args("datamodules.folder.FolderDataModule", shapes_root, run_dir)
        extra = ["--model.net.init_args.decoder=none", f"--ckpt_path={ckpt}"]
        message = f"{ckpt} (--ckpt_path): another network than the config's: checkpoint decoder=3x3:256,3x3:256; config decoder=none"
    elif case == "truncated_ckpt":
        path = _bad_checkpoint(tmp_path)
        args[0], extra, message = "validate", [f"--ckpt_path={path}"], f"{path}: unreadable checkpoint"
    elif case == "missing_ckpt":
        args[0], extra, message = "validate", [f"--ckpt_path={tmp_path / 'x.ckpt'}"], f"{tmp_path / 'x.ckpt'}: no such"
    elif case == "occupied_root":
        (tmp_path / "typo").mkdir()
        (tmp_path / "typo" / "README").write_text("x")
        extra, message = [f"--data.root={tmp_path / 'typo'}", "--data.generate=true"], f"{tmp_path / 'typo'}: data.generate"
    elif case == "empty_split":
        extra, message = [], f"{_empty_train_list(voc_copy)}: empty split file"
    elif case == "worker_error":  # raised inside a DataLoader worker (validating the untrained model): no worker traceback shown
        args[0], extra = "validate", ["--data.num_workers=2", "--data.persistent_workers=false"]
        message = str(_corrupt_image(voc_copy))
    elif case.startswith("predict_"):
        cli, image = predict.main, next((shapes_root / "images").iterdir())
        output = tmp_path / "masks.png"
        if case == "predict_output_file":
            output.write_bytes(b"")
            created, message = tmp_path / "nothing", f"--output {output}: is a file; expected a directory"
            args, extra = ["--ckpt_path", str(ckpt)], []
        else:
            output, created = tmp_path / "masks", tmp_path / "masks"
            unfit = _with_other_net_config(ckpt, tmp_path)
            args, extra = ["--ckpt_path", str(unfit)], []
            message = f"{unfit}: its weights do not fit its net_config ("
        args += ["--input", str(image), "--output", str(output)]
    else:  # export: checked before minutes of ONNX export
        cli = export.main
        created = tmp_path / "model.txt" if case == "export_suffix" else _unwritable_dir(tmp_path) / "model.onnx"
        args, extra = ["--ckpt_path", str(ckpt), "--output", str(created)], []
        message = (f"--output {created}: expected a file name ending in .onnx or .pt2" if case == "export_suffix" else
                   f"--output {created}: {created.parent} is not writable by this user")
    try:
        try:
            status = cli([*args, *extra])
        except SystemExit as exit_:
            status = exit_.code
        assert status in (1, 2)
        err = capfd.readouterr().err  # file-descriptor level: DataLoader workers' output included
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], err[-3000:]
        assert "Traceback" not in err
        # refused before anything is created
        # (with data.generate, as here, a split that does not read is left to prepare_data, after the run starts)
        if case not in ("occupied_root", "empty_split", "worker_error"):
            assert not created.exists()
    finally:
        if case == "export_unwritable" and os.geteuid() == 0:
            subprocess.run(["umount", str(created.parent)], check=True)


def test_wandb_re_sends_what_a_killed_process_had_not_written(tmp_path):
    """The W&B run of a killed process lacks what wandb still buffered (steps 12-19 here) and holds some
    steps after the checkpoint (20-24): the next process re-sends the former from the run record and does
    not log the latter again."""
    from lightning_modules.run.wandb_logger import RunLogger

    records = [{"step": s, "metrics": {"train/loss": 1.0 / (s + 1), **({"val/mIoU": s / 10} if s % 5 == 4 else {})}}
               for s in range(30)]
    first = RunLogger(save_dir=str(tmp_path))
    for record in records[:12] + records[20:25]:
        first.log_metrics(record["metrics"], record["step"])
    first.experiment.finish()
    deadline = time.time() + 120  # wandb-core may still be closing the file (slowly on a busy machine)
    while len([row for run in read_runs(tmp_path) for row in run.history if "train/loss" in row]) < 17:
        assert time.time() < deadline
        time.sleep(0.1)

    second = RunLogger(save_dir=str(tmp_path))
    second.sync_history(records[:20])  # the run record, rewound to a checkpoint at step 20
    for record in records[20:]:  # the resumed run logs steps 20-29 again
        second.log_metrics(record["metrics"], record["step"])
    second.experiment.finish()
    runs = read_runs(tmp_path)
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id
    assert sorted(s for run in runs for s, _ in run.metric("train/loss")) == list(range(30))
    assert sorted(s for run in runs for s, _ in run.metric("val/mIoU")) == [4, 9, 14, 19, 24, 29]
    assert [s for s, _ in runs[1].metric("train/loss")] == [*range(12, 20), *range(25, 30)]


def test_ctrl_c_torn_run_files_and_a_second_run_in_the_folder(voc_root, tmp_path, capfd, recwarn):
    """One short run stopped by SIGINT (Ctrl+C): exit 130 and one line naming its checkpoint. Then a crash's
    leftovers: a torn last line in metrics.jsonl, a damaged line in its middle, a torn results.json. While
    another live process holds the folder, a second run stops with one line naming it; once that process is
    gone its lock is stale, and resuming keeps every readable record, names the bad lines and rewrites both
    files whole."""
    run_dir = tmp_path / "run"
    args = ["fit", *tiny_args(voc_root, run_dir, 4, **{"trainer.limit_val_batches": "1"})]
    ctrl_c = json.dumps({"class_path": "helpers.SignalAtStep", "init_args": {"step": 1, "signum": int(signal.SIGINT)}})
    stopped = run_cli(*args, f"--trainer.callbacks+={ctrl_c}", check=False)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    saved = run_dir / "hpc_ckpt_2.ckpt"
    assert f"Signal SIGINT: saved {saved} at step 2; resume with --ckpt_path last" in stopped.stdout + stopped.stderr
    assert read_step(saved) == 2 and read_results(run_dir)["fit"]["finished"] is False
    # no validation on the way out (Lightning validates a run that stops early; a grace period is seconds)
    assert not any("val/mIoU" in r["metrics"] for r in read_records(run_dir / "metrics.jsonl"))
    assert [p.name for p in run_dir.rglob("*.ckpt")] == ["hpc_ckpt_2.ckpt"]

    metrics, results = run_dir / "metrics.jsonl", run_dir / "results.json"
    lines = metrics.read_text().splitlines()
    assert len(lines) >= 2
    lines.insert(1, '{"step": 0, "sta')  # line 2: damaged
    metrics.write_text("\n".join(lines) + "\n" + '{"step": 1, "stage": "fit", "metr')  # torn last line
    results.write_text(results.read_text()[:40])

    holder = subprocess.Popen(["sleep", "60"])  # another live process holds the folder
    try:
        (run_dir / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "run": None}))
        with pytest.raises(SystemExit) as refused:
            train.main([*args, "--ckpt_path=last"])
        errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
        assert refused.value.code == 1 and errors == [
            f"error: {run_dir}: in use by pid {holder.pid} on {socket.gethostname()} (lock {run_dir / 'run.lock'}); "
            "expected a run directory no other process writes into: stop that run, or give this one another "
            "--trainer.logger.init_args.save_dir"]
    finally:
        holder.kill()
        holder.wait()  # gone: its lock is stale
    train.main([*args, "--ckpt_path=last"])
    captured = capfd.readouterr()
    output = captured.out + captured.err + "\n".join(str(w.message) for w in recwarn)
    assert f"{metrics}: skipped damaged line 2" in output and f"{metrics}: cut the torn last line {len(lines) + 1}" in output
    assert f"{results}: unreadable" in output
    records = read_records(metrics)
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == records  # rewritten whole
    losses = [r["step"] for r in records if "train/loss" in r["metrics"]]
    assert losses == [0, 1, 2, 3]  # the first run's records kept, two new steps after them
    assert any(r["step"] == 3 and "val/mIoU" in r["metrics"] for r in records)  # validated where scheduled
    assert read_results(run_dir)["fit"]["finished"] and not (run_dir / "run.lock").exists()


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(voc_root, tmp_path):
    """The run directory on a 120 MiB tmpfs: the step-2 checkpoints (47 MB each) fit, the step-4 one does
    not. One line names the file and the free space; no temporary file stays; the step-2 ones load."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        run_dir = disk / "run"
        result = run_cli("fit", *tiny_args(voc_root, run_dir, 4), "--checkpoint_every_n_train_steps=2", check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert len(errors) == 1 and re.fullmatch(
            rf"error: {run_dir}/\S+\.ckpt: no space left on device \(\d+\.\d MiB free\); nothing was half-written "
            r"and the earlier files are kept: free space, then resume with --ckpt_path last", errors[0]), errors
        assert not [p for p in run_dir.rglob("*.tmp")]
        kept = sorted(run_dir.rglob("*.ckpt"))
        assert kept and all(read_step(p) == 2 for p in kept)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
