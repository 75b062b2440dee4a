"""A checkpoint from elsewhere cannot run code.

A copy of the tiny trained checkpoint (`shapes_run`) gets one extra pickled object whose unpickling runs a
command that creates a marker file. Every entry point that reads a checkpoint refuses it in one line naming
the file and the type, and the marker never appears; DEEPLAB_TRUST_CHECKPOINTS=1 loads a harmless extra object."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from experiments import export, predict, train
from helpers import SharedNote, fit_args
from lightning_modules.pretrained import load_model, load_network_weights
from lightning_modules.run.checkpoints import TRUST_ENV, AtomicCheckpointIO, UnsafeCheckpointError, read_checkpoint


class ShellPayload:
    """What a malicious checkpoint carries: unpickling it runs a shell command (`touch <marker>`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CopyPayload(ShellPayload):
    """The same through a function of a module torch does not blocklist: `shutil.copyfile(<this file>, <marker>)`."""

    def __reduce__(self):
        return shutil.copyfile, (__file__, str(self.marker))


def _with_extra(ckpt: Path, path: Path, key: str, value: object) -> Path:
    """A copy of `ckpt` with `value` added under `key` (`hyper_parameters.<name>` or a top-level key)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    if key.startswith("hyper_parameters."):
        checkpoint["hyper_parameters"][key.split(".", 1)[1]] = value
    else:
        checkpoint[key] = value
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def untrusting(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.mark.parametrize("payload", [ShellPayload, CopyPayload])
def test_the_payload_is_real(payload, shapes_run, tmp_path):
    """Unpickled the unsafe way, the payload does create its marker: its absence below means something."""
    marker = tmp_path / "payload-ran"
    shared = _with_extra(shapes_run[2], tmp_path / "shared.ckpt", "hyper_parameters.note", payload(marker))
    torch.load(shared, weights_only=False)
    assert marker.exists()


def _cli_args(shapes_run, run_dir: Path, subcommand: str) -> list[str]:
    root, _, _ = shapes_run
    return [subcommand, *fit_args("datamodules.folder.FolderDataModule", root, run_dir)[1:]]


ENTRY_POINTS = ("predict", "export", "validate --ckpt_path", "fit --ckpt_path", "fit --ckpt_path last",
                "--model.init_from")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_refuses_the_payload_in_one_line(entry, shapes_run, tmp_path, capfd, untrusting):
    marker = tmp_path / "payload-ran"
    shared = _with_extra(shapes_run[2], tmp_path / "shared.ckpt", "hyper_parameters.note", ShellPayload(marker))
    run_dir, output = tmp_path / "run", tmp_path / "out"
    if entry == "predict":
        image = next((shapes_run[0] / "images").iterdir())
        call = lambda: predict.main(["--ckpt_path", str(shared), "--input", str(image), "--output", str(output)])
    elif entry == "export":
        call = lambda: export.main(["--ckpt_path", str(shared), "--output", str(output / "model.onnx")])
    elif entry == "fit --ckpt_path last":  # the run directory holds the file as its newest checkpoint
        (run_dir / "checkpoints").mkdir(parents=True)
        shared = Path(shutil.copy(shared, run_dir / "checkpoints" / "last.ckpt"))
        call = lambda: train.main([*_cli_args(shapes_run, run_dir, "fit"), "--ckpt_path=last"])
    else:
        subcommand, option = entry.split(" ") if " " in entry else ("fit", entry)
        call = lambda: train.main([*_cli_args(shapes_run, run_dir, subcommand), f"{option}={shared}"])
    try:
        status = call()
    except SystemExit as exit_:
        status = exit_.code
    out, err = capfd.readouterr()
    assert status == 1
    assert not marker.exists()
    errors = [line for line in (out + err).splitlines() if line.strip()]  # everything the user sees
    assert len(errors) == 1, (out + err)[-3000:]
    assert errors[0].startswith(f"error: {shared}: not loaded: it holds posix.system") and f"{TRUST_ENV}=1" in errors[0]
    assert not output.exists() and not any(p.name != "checkpoints" for p in run_dir.glob("*"))


@pytest.mark.parametrize("payload", [ShellPayload, CopyPayload])
def test_load_model_and_lightning_restore_refuse_the_payload(payload, shapes_run, tmp_path, untrusting):
    """`load_model` from Python, and the trainer's own restore (`trainer.fit/validate(ckpt_path=...)` and the
    SLURM requeue read through the strategy's CheckpointIO, which the training CLI always installs)."""
    marker = tmp_path / "payload-ran"
    shared = _with_extra(shapes_run[2], tmp_path / "shared.ckpt", "hyper_parameters.note", payload(marker))
    name = "posix.system" if payload is ShellPayload else "shutil.copyfile"
    with pytest.raises(UnsafeCheckpointError, match=rf"^{shared}: not loaded: it holds {name}, .*{TRUST_ENV}=1"):
        load_model(shared)
    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False, enable_checkpointing=False)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{shared}: not loaded"):
        trainer.strategy.load_checkpoint(shared)
    assert not marker.exists()


def test_own_and_plain_checkpoints_load_without_the_opt_in(shapes_run, tmp_path, untrusting):
    """What this repository writes holds tensors and plain data only: no type needs allowlisting."""
    ckpt = shapes_run[2]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt) == []
    assert read_checkpoint(ckpt, mmap=True)["global_step"] == 2
    net = load_model(ckpt)
    plain = tmp_path / "state_dict.pth"
    torch.save(net.state_dict(), plain)
    assert load_network_weights(net, plain) == []  # a plain state dict: every tensor loaded


def test_the_opt_in_loads_a_trusted_file(shapes_run, tmp_path, monkeypatch, untrusting):
    ckpt = shapes_run[2]
    noted = _with_extra(ckpt, tmp_path / "noted.ckpt", "hyper_parameters.note", SharedNote("from a colleague"))
    with pytest.raises(UnsafeCheckpointError, match=rf"^{noted}: not loaded: it holds helpers.SharedNote, "):
        load_model(noted)
    # the training CLI's readers: its preflight, LightningCLI's own read of the hyperparameters (which would
    # refuse an unknown hyperparameter, so the object sits beside them) and Lightning's restore (without
    # running the validation loop: the restore comes before it)
    beside = _with_extra(ckpt, tmp_path / "beside.ckpt", "provenance", SharedNote("from a colleague"))
    allowed = torch.serialization.get_safe_globals()
    monkeypatch.setenv(TRUST_ENV, "1")
    try:
        assert load_model(noted).class_names == load_model(ckpt).class_names
        cli = train.main([*_cli_args(shapes_run, tmp_path / "run", "validate"), f"--ckpt_path={beside}",
                          "--trainer.limit_val_batches=0", "--trainer.logger=false",
                          f"--trainer.default_root_dir={tmp_path / 'run'}"])  # its config.yaml goes there
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(allowed)
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    restored = cli.model.state_dict()
    assert cli.trainer.ckpt_path == str(beside) and all(torch.equal(restored[k].cpu(), v) for k, v in trained.items())
