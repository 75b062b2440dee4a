"""Runs that cannot learn or cannot run are refused before anything is created, in one line: data with no
labelled pixel, an empty evaluation split, too little shared memory for the loader workers, an unwritable run
folder, W&B forced online without credentials. And a W&B server out of reach never stops a run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import folder, synthetic
from experiments import train
from helpers import ROOT, fit_args
from lightning_modules.run import wandb_logger

FOLDER = "datamodules.folder.FolderDataModule"


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    """A 5-class folder dataset (train 4, val 2) for this module's tests to copy and damage."""
    return synthetic.generate_folder(tmp_path_factory.mktemp("guards") / "data", n_train=4, n_val=2)


def _copy(shapes_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shapes_data, tmp_path / "data"))


def _unlabel(root: Path, split: str) -> None:
    """Every pixel of every mask of `split` set to 255 (ignored)."""
    for image_id in (root / "splits" / f"{split}.txt").read_text().split():
        mask = root / "masks" / f"{image_id}.png"
        Image.fromarray(np.full_like(np.asarray(Image.open(mask)), 255)).save(mask)


def _refused(args: list[str], capfd) -> str:
    """The one `error:` line of a refused run (exit 1 or 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        train.main(args)
    assert exit_.value.code in (1, 2)
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_with_no_labelled_pixel_is_refused_and_check_names_it(split, shapes_data, tmp_path, capfd):
    root = _copy(shapes_data, tmp_path)
    _unlabel(root, split)
    run_dir = tmp_path / "run"
    line = _refused(fit_args(FOLDER, root, run_dir), capfd)
    assert line.startswith(f"error: --data.{split}_split: every pixel of every mask of {split} ") and "(ignored)" in line
    assert not run_dir.exists()

    assert folder.main(["--check", str(root)]) == 1  # `python -m datamodules.folder --check ROOT`
    err = capfd.readouterr().err
    assert f"{split}: no mask has a labelled pixel" in err
    assert "mask with no labelled pixel: " in err and str(root / "masks") in err


def test_a_batch_with_no_labelled_pixel_has_zero_loss_not_nan():
    from lightning_modules.components import DeepLabV3Plus
    from lightning_modules.segmentation import SegmentationModule

    torch.manual_seed(0)
    net = DeepLabV3Plus(num_classes=5, backbone="mobilenet_v2", weights=None)
    module = SegmentationModule(net=net)
    images = torch.randn(2, 3, 33, 33)
    masks = torch.full((2, 33, 33), 255, dtype=torch.long)
    loss = module.training_step((images, masks), 0)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    masks[0, :5, :5] = 1  # one labelled corner: the mean over those 25 pixels, as cross-entropy's own mean
    module.eval()  # the same forward twice (no dropout)
    logits = net(images)
    expected = torch.nn.functional.cross_entropy(logits.float(), masks, ignore_index=255)
    torch.testing.assert_close(module.training_step((images, masks), 0), expected)


def test_an_empty_evaluation_split_is_refused_before_the_run_folder_exists(shapes_data, tmp_path, capfd):
    root = _copy(shapes_data, tmp_path)
    (root / "splits" / "val.txt").write_text("")
    run_dir = tmp_path / "run"
    line = _refused(["validate", *fit_args(FOLDER, root, run_dir)[1:]], capfd)
    assert str(root / "splits" / "val.txt") in line
    assert not run_dir.exists()  # no wandb/, no wandb_run_id


def test_too_little_shared_memory_names_dev_shm_and_the_workers(shapes_data, tmp_path):
    """/dev/shm replaced by a 1 MB tmpfs in a mount namespace of the run's own (a container's small default)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root) to give the run a small /dev/shm of its own")
    run_dir = tmp_path / "run"
    args = fit_args(FOLDER, shapes_data, run_dir, "--data.num_workers=2", "--data.batch_size=4",
                    "--data.crop_size=129")
    script = f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} -m experiments.train \"$@\""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    # 2 workers × 2 prefetched batches × 4 crops of 129² × 4 bytes
    assert errors[0].startswith("error: /dev/shm: 1 MB free; the loader's 2 workers (--data.num_workers) need about "
                                "1 MB") and "--shm-size" in errors[0], errors[0]
    assert not run_dir.exists()


def test_an_unwritable_run_folder_is_one_line(shapes_data, tmp_path, capfd):
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                        capture_output=True).returncode:
        pytest.skip("a read-only folder for root needs a read-only mount")
    try:
        line = _refused(fit_args(FOLDER, shapes_data, folder / "run"), capfd)
        assert line.startswith(f"error: --trainer.logger.init_args.save_dir {folder / 'run'}: {folder} is not writable")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=True)


def test_wandb_forced_online_without_credentials_is_one_line(shapes_data, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    run_dir = tmp_path / "run"
    line = _refused(fit_args(FOLDER, shapes_data, run_dir), capfd)
    assert line.startswith("error: WANDB_MODE: online needs W&B credentials")
    assert not run_dir.exists()


def test_credentials_without_a_reachable_server_log_offline_and_train(shapes_data, tmp_path, caplog, monkeypatch):
    """A compute node: an API key, no route to the server (a closed port on this machine)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    wandb_logger.server_unreachable.cache_clear()
    run_dir = tmp_path / "run"
    try:
        train.main(fit_args(FOLDER, shapes_data, run_dir))
    finally:
        wandb_logger.server_unreachable.cache_clear()
    lines = [line for line in caplog.messages if "W&B: logging offline" in line]
    assert len(lines) == 1 and "no W&B server at 127.0.0.1:9" in lines[0] and "wandb sync" in lines[0], lines
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert next(run_dir.rglob("last.ckpt")).is_file()
