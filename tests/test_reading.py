"""Images decoded by TorchCodec, masks by PIL as palette indices, one orientation rule for both."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from datamodules.reading import DatasetError, LabelSpace, Sample, decode_mask, decode_sample, read_rgb
from helpers import ROOT

ORIENTATION = 0x0112  # the EXIF tag; 6 = "rotate 90° clockwise to display"


def _indices(h: int = 33, w: int = 47, seed: int = 0) -> np.ndarray:
    """Class indices 0..20 with a VOC boundary value (255) in it."""
    labels = np.random.default_rng(seed).integers(0, 21, (h, w)).astype(np.uint8)
    labels[0, :5] = 255
    return labels


def _rgb(h: int = 33, w: int = 47) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _save_palette_png(path, labels: np.ndarray, palette: list[int], **options) -> None:
    png = Image.fromarray(labels, mode="P")
    png.putpalette(palette)
    png.save(path, **options)


def _as_pil(path) -> np.ndarray:
    with Image.open(path) as pil:
        return np.array(pil)


def _pil_rgb(path) -> np.ndarray:
    """What a viewer shows: PIL with the EXIF orientation applied."""
    with Image.open(path) as pil:
        return np.array(ImageOps.exif_transpose(pil).convert("RGB"))


def test_palette_mask_is_the_index_never_the_colour(tmp_path):
    labels = _indices()
    shuffled = np.random.default_rng(2).permutation(256)  # colours in no relation to their index
    palettes = {
        "shuffled": [int(v) for i in shuffled for v in (i, (7 * i) % 256, 255 - i)],
        "dataset": LabelSpace(tuple(f"c{i}" for i in range(21))).png_palette(),  # unused entries all black
    }
    for name, palette in palettes.items():
        path = tmp_path / f"{name}.png"
        _save_palette_png(path, labels, palette)
        mask = decode_mask(path)
        assert mask.shape == (1, *labels.shape) and mask.dtype == torch.uint8
        assert np.array_equal(mask[0].numpy(), labels) and np.array_equal(mask[0].numpy(), _as_pil(path))
    # a 2-bit palette and a palette with transparency (tRNS) are indices too
    small = labels % 4
    _save_palette_png(tmp_path / "2bit.png", small, [9, 9, 9, 200, 0, 0, 0, 200, 0, 1, 2, 3], bits=2)
    assert np.array_equal(decode_mask(tmp_path / "2bit.png")[0].numpy(), small)
    _save_palette_png(tmp_path / "trns.png", labels, palettes["shuffled"], transparency=0)
    assert np.array_equal(decode_mask(tmp_path / "trns.png")[0].numpy(), labels)


def test_gray_label_png_keeps_its_values_and_other_pngs_are_refused(tmp_path):
    labels = _indices()
    Image.fromarray(labels, mode="L").save(tmp_path / "gray.png")
    assert np.array_equal(decode_mask(tmp_path / "gray.png")[0].numpy(), labels)
    Image.fromarray(labels % 2 == 1).save(tmp_path / "1bit.png")  # mode "1": the stored 0/1, not 0/255
    assert np.array_equal(decode_mask(tmp_path / "1bit.png")[0].numpy(), labels % 2)
    Image.fromarray(_rgb()).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"rgb.png: mask is a RGB PNG; expected a palette or 8-bit gray PNG"):
        decode_mask(tmp_path / "rgb.png")
    Image.fromarray(labels, mode="L").save(tmp_path / "mask.jpg")  # a lossy mask is not one
    with pytest.raises(DatasetError, match=r"mask.jpg: cannot decode the mask \(a JPEG file\)"):
        decode_mask(tmp_path / "mask.jpg")


def test_images_read_as_a_viewer_shows_them(tmp_path):
    rgb = _rgb()
    files = {"rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
             "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
             "gray.jpg": Image.fromarray(rgb[..., 0]),
             "palette.png": Image.fromarray(_indices(), mode="P"),
             "old.bmp": Image.fromarray(rgb)}  # not a TorchCodec format: PIL reads it
    for name, pil in files.items():
        pil.save(tmp_path / name)
        image = read_rgb(tmp_path / name)
        assert image.shape == (3, 33, 47) and image.dtype == torch.uint8, name
        difference = np.abs(image.permute(1, 2, 0).numpy().astype(int) - _pil_rgb(tmp_path / name).astype(int))
        assert difference.max() <= 2, name
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit gray
    assert torch.equal(read_rgb(tmp_path / "deep.png")[0], torch.from_numpy(rgb[..., 0]))


def test_exif_orientation_turns_image_and_mask_alike(tmp_path):
    """Stored 40 wide and 20 high with class 1 (red) on the left half; EXIF 6 displays it 20 wide, 40 high
    with class 1 on top. The image and its mask carry the tag; both are turned, and still agree."""
    labels = np.zeros((20, 40), np.uint8)
    labels[:, :20] = 1
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[labels == 1] = (220, 30, 30)
    image_file, mask_file = Image.fromarray(rgb), Image.fromarray(labels, mode="P")
    mask_file.putpalette(LabelSpace(("background", "thing")).png_palette())
    for pil, path in ((image_file, tmp_path / "phone.jpg"), (mask_file, tmp_path / "phone.png")):
        exif = pil.getexif()
        exif[ORIENTATION] = 6
        pil.save(path, exif=exif)
    image, mask = decode_sample(Sample(tmp_path / "phone.jpg", tmp_path / "phone.png"), num_classes=2)
    assert image.shape == (3, 40, 20) and mask.shape == (1, 40, 20)
    assert (mask[0, :20] == 1).all() and (mask[0, 20:] == 0).all()
    assert (image[0, :18] > 180).all() and (image[0, 22:] < 60).all()  # red on top, as the mask says
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - _pil_rgb(tmp_path / "phone.jpg")).max() <= 2
    with Image.open(tmp_path / "phone.png") as pil:
        assert np.array_equal(mask[0].numpy(), np.array(ImageOps.exif_transpose(pil)))


def test_foreign_torn_and_animated_files_are_one_reason(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    Image.fromarray(_rgb()).save(tmp_path / "whole.jpg")
    (tmp_path / "torn.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    frames = [Image.fromarray(_rgb()), Image.fromarray(255 - _rgb())]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    for name, reason in (("notes.jpg", "not an image"), ("torn.jpg", "incomplete or truncated"),
                         ("moving.gif", "animated image of 2 frames; expected a still image")):
        with pytest.raises(ValueError, match=reason) as error:
            read_rgb(tmp_path / name)
        assert "\n" not in str(error.value) and ".cpp" not in str(error.value)
        mask = tmp_path / "mask.png"
        Image.fromarray(np.zeros((33, 47), np.uint8)).save(mask)
        with pytest.raises(DatasetError, match=rf"{name}: cannot decode the image \(.*{reason}"):
            decode_sample(Sample(tmp_path / name, mask), num_classes=2)


_WITHOUT_TORCHCODEC = """
import sys
sys.modules["torchcodec"] = None  # as on a machine whose torch no image-capable TorchCodec is built for
from pathlib import Path
import torch
from datamodules import codecs, reading
out = Path(sys.argv[1])
image = torch.arange(3 * 20 * 30, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(3, 20, 30)
codecs.write_png(out / "a.png", image)
codecs.write_jpeg(out / "a.jpg", image)
torch.save({"backend": codecs.BACKEND, "png": reading.read_rgb(out / "a.png"),
            "jpg": reading.read_rgb(out / "a.jpg"), "image": image}, out / "decoded.pt")
"""


def test_without_torchcodec_images_are_read_and_written_by_torchvision(tmp_path):
    subprocess.run([sys.executable, "-c", _WITHOUT_TORCHCODEC, str(tmp_path)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    fallback = torch.load(tmp_path / "decoded.pt")
    assert fallback["backend"] == "torchvision.io"
    assert torch.equal(fallback["png"], fallback["image"])  # lossless both ways
    assert torch.equal(read_rgb(tmp_path / "a.png"), fallback["png"])  # TorchCodec reads torchvision's file
    jpeg = read_rgb(tmp_path / "a.jpg").float()
    assert (jpeg - fallback["jpg"].float()).abs().mean() < 1.0
