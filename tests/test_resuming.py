"""A diverging run stops, one run per folder (in time too), a resume is the same run unless a
change is asked for, and "train longer" trains."""
from __future__ import annotations

import json
import multiprocessing
import re
import time

import pytest
import torch

from experiments import train
from helpers import tiny_args
from lightning_modules.run import lock as run_lock
from lightning_modules.run.checkpoints import read_step
from lightning_modules.run.record import read_records, read_results


def _errors(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]


def _refused(args: list[str], capfd) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as stopped:
        train.main(args)
    return stopped.value.code, _errors(capfd)


def _lr(run_dir, step: int) -> float:
    return next(r["metrics"]["lr-SGD/decay"] for r in read_records(run_dir / "metrics.jsonl")
                if r["step"] == step and "lr-SGD/decay" in r["metrics"])


def test_a_diverging_run_stops_and_keeps_its_last_finite_state(voc_root, tmp_path, capfd, recwarn):
    """`--model.lr 1e6`: one line naming the step and the likely causes, exit 1, no checkpoint after the first
    non-finite step (every tensor of last.ckpt finite, no best: `--ckpt_path last` resumes from the last finite
    state). A validation of non-finite weights says its loss is not finite."""
    run_dir = tmp_path / "run"
    args = ["fit", *tiny_args(voc_root, run_dir, 4, **{"trainer.limit_val_batches": "1"}),
            "--checkpoint_every_n_train_steps=1"]
    code, errors = _refused([*args, "--model.lr=1e6"], capfd)
    assert code == 1 and len(errors) == 1, errors
    match = re.match(r"error: training diverged at step (\d+): the (loss|gradients|weights) (is|are) not finite", errors[0])
    assert match and "--model.lr 1000000.0" in errors[0] and "--trainer.precision 32-true" in errors[0], errors
    assert "--ckpt_path last" in errors[0]
    diverged = int(match.group(1))
    last = next(run_dir.rglob("last.ckpt"))
    saved = read_step(last)
    assert 1 <= saved <= diverged and not list(run_dir.rglob("best-*.ckpt"))
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())

    poisoned = tmp_path / "poisoned.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    next(v for k, v in checkpoint["state_dict"].items() if k.endswith("weight")).fill_(float("nan"))
    torch.save(checkpoint, poisoned)
    train.main(["validate", *tiny_args(voc_root, tmp_path / "eval", 4, **{"trainer.limit_val_batches": "1"}),
                f"--ckpt_path={poisoned}"])
    output = capfd.readouterr().err + "\n".join(str(w.message) for w in recwarn)
    assert re.search(r"val/loss is nan: the network's outputs are not finite", output), output[-2000:]


def test_a_fresh_fit_into_another_runs_folder_is_refused_before_anything_is_written(voc_root, tmp_path, capfd):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (run_dir / "metrics.jsonl").write_text("")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, errors = _refused(["fit", *tiny_args(voc_root, run_dir, 2)], capfd)
    assert code == 2 and errors == [
        f"error: --trainer.logger.init_args.save_dir: {run_dir} holds another run (1 checkpoint, metrics.jsonl); "
        "expected a new or empty folder for a fresh fit: resume that run with --ckpt_path last, or choose another "
        "folder"]
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def _take(run_dir: str, start_at, ready, done, results) -> None:
    ready.put(True)
    while not start_at.value or time.time() < start_at.value:  # a busy wait: a barrier wakes one after another
        pass
    try:
        results.put(run_lock.acquire(run_dir) is not None)
    except run_lock.RunInUseError:
        results.put(False)
    done.wait()  # hold the lock until both have tried: a gone holder's lock would be stale


def test_the_lock_is_exclusive_for_starts_at_the_same_moment(tmp_path):
    """Two processes take one run directory at the same instant, 20 times: exactly one gets it each time (a
    check-then-rename lock let both in about a quarter of the trials on 2 cores)."""
    context = multiprocessing.get_context("fork")
    for trial in range(20):
        start_at, ready, done, results = context.Value("d", 0.0), context.Queue(), context.Barrier(2), context.Queue()
        processes = [context.Process(target=_take, args=(str(tmp_path / f"run{trial}"), start_at, ready, done, results))
                     for _ in range(2)]
        for p in processes:
            p.start()
        for _ in processes:
            ready.get(timeout=60)
        start_at.value = time.time() + 0.05
        got = sorted(results.get(timeout=60) for _ in processes)
        for p in processes:
            p.join(timeout=60)
        assert got == [False, True], f"trial {trial}: {got}"


def test_a_lock_of_another_host_names_the_command_that_clears_it(voc_root, tmp_path, capfd):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / "run.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "node-gone", "run": None}))
    code, errors = _refused(["fit", *tiny_args(voc_root, run_dir, 2)], capfd)
    assert code == 1 and errors == [
        f"error: {run_dir}: in use by pid 4242 on node-gone (lock {lock}); expected a run directory no other process "
        "writes into: stop that run, or give this one another --trainer.logger.init_args.save_dir; if node-gone is "
        f"gone (a crashed node), clear the lock with `python -m lightning_modules.run.lock --clear {run_dir}`"]
    run_lock.main(["--clear", str(run_dir)])  # `python -m lightning_modules.run.lock --clear DIR`
    assert capfd.readouterr().out.strip() == f"{run_dir}: removed the lock of pid 4242 on node-gone"
    assert not lock.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing else was written


def test_a_changed_resume_is_refused_unless_applied_and_train_longer_trains(voc_root, tmp_path, capfd):
    """Resuming a finished 2-step run with another LR, crop and max_steps lists the three differences; the same
    resume with a longer max_steps, a lower LR and `--resume_changes apply` trains steps 2 and 3 on the poly curve
    of the new LR and length (not at LR 0), and results.json records both changes and their step."""
    run_dir = tmp_path / "run"
    args = ["fit", *tiny_args(voc_root, run_dir, 2, **{"trainer.limit_val_batches": "1"})]
    train.main(args)
    records = (run_dir / "metrics.jsonl").read_text()
    longer = ["fit", *tiny_args(voc_root, run_dir, 4, **{"trainer.limit_val_batches": "1"}), "--ckpt_path=last"]
    last = next(run_dir.rglob("last.ckpt"))
    code, errors = _refused([*longer, "--model.lr=0.1", "--data.crop_size=33"], capfd)
    assert code == 2 and errors == [
        f"error: --ckpt_path: {last}: this resume changes the run: trainer.max_steps 2 -> 4; model.lr 0.02 -> 0.1; "
        "data.crop_size 65 -> 33; expected the settings the checkpoint was trained with (its run's config.yaml), "
        "or --resume_changes apply to change them from step 2 on"]
    assert (run_dir / "metrics.jsonl").read_text() == records

    train.main([*longer, "--model.lr=0.01", "--resume_changes=apply"])
    assert read_step(last) == 4
    assert _lr(run_dir, 2) == pytest.approx(0.01 * (1 - 2 / 4) ** 0.9)
    assert _lr(run_dir, 3) == pytest.approx(0.01 * (1 - 3 / 4) ** 0.9)
    steps = [r["step"] for r in read_records(run_dir / "metrics.jsonl") if "train/loss" in r["metrics"]]
    assert steps == [0, 1, 2, 3]
    fit = read_results(run_dir)["fit"]
    assert fit["finished"] and fit["step"] == 4 and fit["config_changes"] == [
        {"step": 2, "changes": {"trainer.max_steps": {"old": 2, "new": 4}, "model.lr": {"old": 0.02, "new": 0.01}}}]
