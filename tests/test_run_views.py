"""What users look at — W&B pictures, the end-of-stage table and pictures, `experiments.summary`,
and `--check` reporting every defect of a tree at once."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from datamodules import cityscapes, folder, synthetic, voc
from datamodules.check import SHOWN
from experiments import summary
from experiments.predict import segment
from lightning_modules.run.wandb_offline import read_runs
from helpers import console_of_run, tiny_args
from lightning_modules.components.protocol import EvalProtocol
from lightning_modules.pretrained import load_model


@pytest.fixture(scope="module")
def two_runs(voc_root, tmp_path_factory, request):
    """Two quickstart-style runs that differ in the learning rate (fp32: exact predictions to compare), and their
    console output: 4 steps validated on 4 images (the W&B pictures), then 2 steps on 1 (only to be summarised).
    Both in this process."""
    tmp = tmp_path_factory.mktemp("runs")
    runs = []
    for lr, steps, val_batches in (("0.02", 4, "4"), ("0.01", 2, "1")):
        run_dir = tmp / f"lr{lr}"
        log = console_of_run(request, "fit", *tiny_args(voc_root, run_dir, max_steps=steps, **{
            "model.lr": lr, "trainer.precision": "32-true", "model.channels_last": "false",
            "trainer.limit_val_batches": val_batches}))
        runs.append((run_dir, log))
    return runs


def test_wandb_predictions_show_the_image_and_the_predicted_masks(voc_root, two_runs):
    run_dir, log = two_runs[0]
    assert "Images sizes do not match" not in log
    files = next(run_dir.glob("wandb/offline-run-*/files"))
    rows = [row for run in read_runs(run_dir) for row in run.history if "val/predictions/0/path" in row]
    assert rows
    row = rows[-1]  # the last validation, at the step of last.ckpt
    net = load_model(next(run_dir.glob("**/checkpoints/last.ckpt")))
    protocol = EvalProtocol(canvas=(513, 513)).resolve(net.output_stride)
    val = voc.list_split(voc_root, "val")
    shown = [key.removesuffix("/path") for key in row if key.startswith("val/predictions/") and key.count("/") == 3
             and key.endswith("/path")]
    assert len(shown) == 4
    for key in shown:
        image, mask = voc.decode_sample(val[int(key.rsplit("/", 1)[1])])
        picture = np.asarray(Image.open(files / row[f"{key}/path"]).convert("RGB"), dtype=np.float64)
        assert picture.shape == (*image.shape[1:], 3)  # full size, not resized to a common one
        assert np.abs(picture - image.permute(1, 2, 0).numpy()).mean() < 1.0  # the real colours
        masks = {name: np.asarray(Image.open(files / row[f"{key}/masks/{name}/path"]))
                 for name in ("prediction", "ground_truth")}
        assert (masks["ground_truth"] == mask[0].numpy()).all()
        predicted = segment(net, image[None], protocol)[0].numpy()
        assert (masks["prediction"] == predicted).mean() > 0.999


def test_end_of_fit_table_pictures_and_summary_of_two_runs(two_runs, tmp_path, capsys):
    for run_dir, log in two_runs:
        assert "val/mIoU" in log and "best checkpoint" in log and "val/iou/" in log
        for name in ("curves.png", "confusion_matrix_fit.png"):
            picture = np.asarray(Image.open(run_dir / name).convert("L"))
            assert picture.std() > 10  # drawn on, not blank
    output = tmp_path / "summary.png"
    assert summary.main([str(d) for d, _ in two_runs] + ["--output", str(output)]) == 0
    table = capsys.readouterr().out
    assert "lr=0.02" in table and "lr=0.01" in table  # named by the setting that differs
    assert "seed" not in table.splitlines()[0]  # and by nothing else
    assert "best-4.ckpt (step 4)" in table and "best-2.ckpt (step 2)" in table
    assert np.asarray(Image.open(output).convert("L")).std() > 10
    assert summary.main([str(tmp_path / "not-a-run")]) == 1
    assert "expected a run folder" in capsys.readouterr().err


def test_check_reports_every_defect_of_a_voc_tree_in_one_pass(voc_copy, capsys):
    root = voc.voc_dir(voc_copy)
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    (root / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"\xff\xd8 truncated")  # bad image
    Image.fromarray(np.zeros((9, 9), np.uint8), mode="L").save(root / "SegmentationClass" / f"{ids[1]}.png")
    for i in ids[2: SHOWN + 4]:  # more missing masks than are shown
        (root / "SegmentationClass" / f"{i}.png").unlink()
    assert voc.check_tree(voc_copy) == 1
    out = capsys.readouterr()
    defects = SHOWN + 4
    assert f"train: 30 samples, {defects} with defects" in out.out and "val: 16 samples OK" in out.out
    assert f"trainaug: 56 samples, {defects} with defects" in out.out  # the same samples, checked once
    assert f"missing mask: {SHOWN + 2}, the first {SHOWN} shown" in out.err
    assert f"{ids[2]}.png" in out.err and f"{ids[SHOWN + 3]}.png" not in out.err
    assert "bad image: 1" in out.err and f"{ids[0]}.jpg" in out.err
    assert "bad mask: 1" in out.err and "expected the same height and width" in out.err
    assert f"error: {defects} defects in {defects} samples" in out.err


def test_folder_masks_are_checked_up_front_naming_the_closest_file(tmp_path, capsys):
    root = synthetic.generate_folder(tmp_path / "mine", n_train=4, n_val=2)
    first = (root / "splits" / "train.txt").read_text().split()[0]
    (root / "masks" / f"{first}.png").rename(root / "masks" / f"{first}_mask.png")
    data = folder.FolderDataModule(str(root))
    with pytest.raises(folder.DatasetError, match=rf"train.txt: lists {first} but .*{first}.png "
                                                  rf"\(closest there: {first}_mask.png\) \(1 of 4"):
        data.list_samples("train")
    assert folder.main(["--check", str(root)]) == 1
    assert f"closest there: {first}_mask.png" in capsys.readouterr().err

    city = synthetic.generate_cityscapes(tmp_path / "cityscapes", n_train=2, n_val=2, size=(32, 64))
    for mask in sorted((city / "gtFine" / "val").glob("*/*_labelIds.png")):
        mask.unlink()
    shutil.rmtree(city / "leftImg8bit" / "train")
    assert cityscapes.main(["--check", str(city)]) == 1
    err = capsys.readouterr().err
    assert "missing mask: 2" in err and "unusable split: 1" in err


def test_confusion_matrix_cells_read_as_their_share():
    from lightning_modules.run.plots import share_label

    assert [share_label(v) for v in (0.005, 0.5, 0.97, 0.994, 0.996, 1.0)] == [".01", ".50", ".97", ".99", "1", "1"]
