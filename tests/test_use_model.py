"""Your own dataset (folder layout, Cityscapes), then predict, load, export and fine-tune.

One tiny quickstart-style training on a generated 5-class folder dataset gives the checkpoint every
other test uses (`shapes_run`, a session fixture in conftest.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import cityscapes, folder, synthetic
from datamodules.reading import Sample, decode_mask
from experiments import export, predict
from lightning_modules.run.wandb_offline import read_runs
from helpers import console_of_run, fit_args
from lightning_modules.pretrained import load_model


def _logged_ious(run_dir) -> set[str]:
    (run,) = read_runs(run_dir)
    return {k.removeprefix("val/iou/") for row in run.history for k in row if k.startswith("val/iou/")}


def test_folder_dataset_trains_with_its_own_classes(shapes_run, tmp_path, capsys):
    shared, run_dir, ckpt = shapes_run
    root = Path(shutil.copytree(shared, tmp_path / "data"))  # its classes.txt is rewritten below
    ious = _logged_ious(run_dir)
    assert ious and ious <= set(synthetic.FOLDER_CLASSES)
    net = load_model(ckpt)  # the two-line load: no trainer, eval mode, labels from the dataset
    assert not net.training and net.class_names == synthetic.FOLDER_CLASSES and net.classifier.out_channels == 5
    assert folder.main(["--check", str(root)]) == 0
    assert "train: 8 samples OK" in capsys.readouterr().out
    (root / "classes.txt").write_text("background\nonly one colour 1 2\n")
    with pytest.raises(folder.DatasetError, match=r"classes.txt:2: .*expected 'name' or 'name R G B'"):
        folder.read_classes(root / "classes.txt")


def _user_images(directory) -> dict[str, tuple[int, int]]:
    """Images of the kinds users have, with the (width, height) a viewer shows; and one corrupt file."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    directory.mkdir()
    Image.fromarray(rgb).save(directory / "photo.jpg")
    Image.fromarray(rgb[:90, :130]).save(directory / "screenshot.png")
    Image.fromarray(rgb[:70, :50, 0]).save(directory / "gray.png")
    Image.fromarray(np.dstack([rgb[:60, :80], rgb[:60, :80, :1]])).save(directory / "logo.png")
    Image.fromarray(rgb[:64, :96]).convert("CMYK").save(directory / "print.jpg")
    rotated = Image.fromarray(rgb[:80, :40])  # stored 40 wide, 80 high; EXIF says rotate 90°
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(directory / "phone.jpg", exif=exif)
    (directory / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (directory / "notes.jpg").write_text("not a picture\n")  # a text file with an image's name
    return {"photo": (200, 150), "screenshot": (130, 90), "gray": (50, 70), "logo": (80, 60), "print": (96, 64),
            "phone": (80, 40)}


def test_predict_writes_one_palette_png_per_image_at_its_size(shapes_run, tmp_path, capsys):
    _, _, ckpt = shapes_run
    expected = _user_images(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--ckpt_path", str(ckpt), "--input", str(tmp_path / "in"), "--output", str(out), "--overlay"]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    assert f"skipped {tmp_path / 'in' / 'broken.jpg'}" in captured.err
    assert f"skipped {tmp_path / 'in' / 'notes.jpg'}: cannot read the image (not an image" in captured.err
    assert "wrote 6 masks" in captured.out and "skipped 2 unreadable" in captured.out
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(expected)
    for name, size in expected.items():
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == size, name
        assert Image.open(out / f"{name}_overlay.jpg").size == size
    net = load_model(ckpt)
    assert mask.getpalette()[:15] == [v for color in net.palette for v in color]
    assert int(np.asarray(mask).max()) < 5

    # the evaluation protocol and an explicit downscale: the mask still has the image's size
    glob = str(tmp_path / "in" / "screen*.png")
    assert predict.main(["--ckpt_path", str(ckpt), "--input", glob, "--output", str(tmp_path / "ms"),
                         "--output_stride", "8", "--scales", "0.75", "1.0", "--flip", "--max_side", "64"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 masks" in out and "(OS8 MS flip)" in out
    assert Image.open(tmp_path / "ms" / "screenshot.png").size == expected["screenshot"]


def test_exported_onnx_matches_pytorch_and_predict(shapes_run, tmp_path):
    import onnxruntime as ort
    _, _, ckpt = shapes_run
    onnx_path = tmp_path / "model.onnx"
    assert export.main(["--ckpt_path", str(ckpt), "--output", str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path))
    reference = export.exportable(load_model(ckpt))
    rng = np.random.default_rng(1)
    for h, w in ((65, 97), (375, 500)):  # the graph was traced at 97×129: height and width are dynamic
        image = rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8)
        (logits,) = session.run(None, {"image": image})
        with torch.no_grad():
            expected = reference(torch.from_numpy(image)).numpy()
        assert logits.shape == expected.shape == (1, 5, h, w)
        assert np.abs(logits - expected).max() <= 1e-3 < np.abs(expected).max()

    # the same 375×500 image through experiments.predict (aligned canvas) and through the ONNX graph
    Image.fromarray(image[0].transpose(1, 2, 0)).save(tmp_path / "photo.png")
    predict.main(["--ckpt_path", str(ckpt), "--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "out")])
    predicted = decode_mask(tmp_path / "out" / "photo.png")[0].numpy()
    assert (logits[0].argmax(0) == predicted).mean() >= 0.99


def test_cityscapes_tree_fine_tuned_from_another_dataset(shapes_run, tmp_path, capsys, request):
    _, _, ckpt = shapes_run
    root = synthetic.generate_cityscapes(tmp_path / "cityscapes", n_train=8, n_val=4)
    assert cityscapes.main(["--check", str(root)]) == 0
    assert "val: 4 samples OK" in capsys.readouterr().out
    sample = cityscapes.list_cityscapes_split(root, "val")[0]
    stored = decode_mask(sample.mask)
    _, mask = cityscapes.CityscapesDataModule(str(root)).decoder()(sample)
    assert (mask[stored == 7] == 0).all() and (mask[stored == 26] == 13).all() and (mask[stored == 0] == 255).all()
    assert isinstance(sample, Sample) and sample.image.name.endswith("_leftImg8bit.png")

    run_dir = tmp_path / "run"
    log = console_of_run(request, *fit_args("datamodules.cityscapes.CityscapesDataModule", root, run_dir,
                                            f"--model.init_from={ckpt}"))
    line = next(line for line in log.splitlines() if "init_from" in line)
    assert "classifier.weight (5, 256, 1, 1)→(19, 256, 1, 1)" in line and "classifier.bias (5,)→(19,)" in line
    assert "backbone" not in line.split("not loaded")[1]  # everything else came from the checkpoint
    ious = _logged_ious(run_dir)
    assert ious and ious <= set(cityscapes.CITYSCAPES_LABELS.class_names)
