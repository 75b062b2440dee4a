"""The VOC 2012 test split and the evaluation server's archive (`predict --voc_test`, paper Table 6)."""
from __future__ import annotations

import shutil
import tarfile

import numpy as np
from PIL import Image

from datamodules import synthetic
from datamodules.voc import list_test_images, voc_dir
from experiments import predict, submission


def test_the_generated_test_split_has_images_and_no_masks(voc_root):
    images = list_test_images(voc_root)
    assert list(images) == [f"2010_{i:06d}" for i in range(4)]
    assert all(p.is_file() and not (voc_dir(voc_root) / "SegmentationClass" / f"{i}.png").exists()
               for i, p in images.items())


def test_predict_voc_test_writes_one_mask_per_test_id_and_a_checked_archive(voc_root, shapes_run, tmp_path, capsys):
    _, _, ckpt = shapes_run
    out = tmp_path / "submission"
    # the test protocol's MS + flip, at tiny sizes: the network sees images downscaled to 64 px
    assert predict.main(["--ckpt_path", str(ckpt), "--voc_test", str(voc_root), "--output", str(out),
                         "--scales", "0.75", "1.0", "--max_side", "64", "--canvas", "65", "65"]) == 0
    printed = capsys.readouterr().out
    assert "OS" in printed and "flip" in printed.lower() and submission.VOC_SERVER in printed
    images = list_test_images(voc_root)
    masks = sorted((out / submission.RESULTS_DIR).iterdir())
    assert [p.name for p in masks] == [f"{i}.png" for i in images]
    for path in masks:
        with Image.open(path) as mask, Image.open(images[path.stem]) as image:
            assert mask.mode == "P" and mask.size == image.size and np.array(mask).max() < 5
    with tarfile.open(out / submission.ARCHIVE) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert names == [f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in images]

    # the check catches a mask of the wrong size and a missing one
    wrong = out / submission.RESULTS_DIR / masks[0].name
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").convert("P").save(wrong)
    masks[1].unlink()
    problems = submission.check_archive(submission.write_archive(out), images, 5)
    assert any("5×5, its image is" in p for p in problems) and any("1 test ids have no mask" in p for p in problems)


def test_a_missing_test_split_or_one_with_masks_is_one_line(voc_copy, shapes_run, tmp_path, capsys):
    _, _, ckpt = shapes_run
    lists = voc_dir(voc_copy) / "ImageSets" / "Segmentation"
    shutil.copy(lists / "val.txt", lists / "test.txt")  # a labelled split passed off as the test list
    args = ["--ckpt_path", str(ckpt), "--voc_test", str(voc_copy), "--output", str(tmp_path / "a")]
    assert predict.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --voc_test: ") and "have masks" in err and len(err.splitlines()) == 1
    (lists / "test.txt").unlink()
    assert predict.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "missing split file" in err and "test.txt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_the_test_split_changes_no_other_generated_file(tmp_path):
    """The quickstart's numbers and the tests rest on the generated train/val/SBD files staying byte-identical."""
    a = synthetic.generate(tmp_path / "a", n_voc_train=3, n_voc_val=2, n_sbd_only=2, n_voc_test=0)
    b = synthetic.generate(tmp_path / "b", n_voc_train=3, n_voc_val=2, n_sbd_only=2, n_voc_test=4)
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    fa, fb = files(a), files(b)
    assert {str(p) for p in set(fb) - set(fa)} == {"VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt",
                                                   *(f"VOCdevkit/VOC2012/JPEGImages/2010_{i:06d}.jpg" for i in range(4))}
    assert all(fa[p] == fb[p] for p in fa)
