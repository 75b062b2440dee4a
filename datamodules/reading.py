"""Reading (image, class-index mask) pairs from files, shared by every dataset layout.

A dataset is data: its class names, palette and ignore index travel as a `LabelSpace`, and a layout
module (`voc.py`, `folder.py`, `cityscapes.py`) only says where the files are and, where the files store
other ids than the training classes (Cityscapes label ids), the table that maps them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .codecs import decode_image

#: the label value every mask uses for "not scored" once decoded (official code: ignore_label 255)
IGNORE_INDEX = 255


class DatasetError(ValueError):
    """Bad or missing data; the message names the file and what was expected."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path  # .png (palette or gray class indices) or SBD .mat


def color_map(num_classes: int) -> list[tuple[int, int, int]]:
    """The VOC colour map (bit-interleaved class index): distinct colours for any class count."""
    colors = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


@dataclass(frozen=True)
class LabelSpace:
    """What a model trained on a dataset must know about its labels: class names (index order), one RGB
    colour per class, and the mask value that is not scored."""

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = field(default=())
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        palette = tuple(tuple(int(v) for v in c) for c in self.palette) or tuple(color_map(len(self.class_names)))
        if len(palette) != len(self.class_names) or any(len(c) != 3 for c in palette):
            raise ValueError(f"palette needs one RGB triple per class ({len(self.class_names)}), got {list(palette)}")
        object.__setattr__(self, "palette", palette)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def png_palette(self) -> list[int]:
        """768 values for a palette PNG: the classes' colours, white for the ignore index, black elsewhere."""
        flat = [0] * 768
        for i, color in enumerate(self.palette):
            flat[3 * i: 3 * i + 3] = color
        if self.num_classes <= self.ignore_index < 256:
            flat[3 * self.ignore_index: 3 * self.ignore_index + 3] = (255, 255, 255)
        return flat

    def as_dict(self) -> dict:
        """Plain lists, for checkpoints and logs."""
        return {"class_names": list(self.class_names), "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index}


def label_lookup(mapping: dict[int, int], default: int = IGNORE_INDEX) -> torch.Tensor:
    """A 256-entry uint8 table: stored id → training class (everything unmapped → `default`)."""
    table = torch.full((256,), default, dtype=torch.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


def decode_sample(sample: Sample, num_classes: int,
                  lookup: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 image 3×H×W, uint8 mask 1×H×W of class indices); DatasetError naming the file otherwise.

    `lookup` maps the stored ids to class indices first (Cityscapes label ids → train ids)."""
    image = decode_rgb(sample.image)
    mask = decode_mask(sample.mask)
    if mask.shape[-2:] != image.shape[-2:]:
        raise DatasetError(
            f"{sample.mask}: mask is {tuple(mask.shape[-2:])} but its image {sample.image} is "
            f"{tuple(image.shape[-2:])}; expected the same height and width"
        )
    if lookup is not None:
        mask = lookup[mask.long()]
    counts = torch.bincount(mask.flatten(), minlength=256)  # one pass: 2.5x faster than comparing twice
    counts[IGNORE_INDEX] = 0
    if counts[num_classes:].any():
        values = (counts[num_classes:].nonzero().flatten() + num_classes).tolist()[:10]
        raise DatasetError(f"{sample.mask}: labels {values} outside 0..{num_classes - 1} and {IGNORE_INDEX} (ignore)")
    return image, mask


def read_rgb(path: Path) -> torch.Tensor:
    """uint8 3×H×W RGB as a viewer shows the file: EXIF orientation applied, gray/palette/RGBA/CMYK → RGB,
    16 → 8 bits. Training images and `experiments.predict` inputs are read by this one function.

    TorchCodec decodes JPEG, PNG, WebP, GIF and AVIF (and applies the EXIF orientation itself, always);
    PIL reads what TorchCodec does not (BMP, TIFF). FileNotFoundError if missing; ValueError with the
    reason ("not an image", a torn file, an animation) otherwise."""
    try:
        image = decode_image(path)
    except FileNotFoundError:
        raise
    except (RuntimeError, ValueError) as codec_error:
        image = _read_rgb_with_pil(path, codec_error)
    if image.ndim == 4:  # animated WebP / GIF / AVIF: which frame is meant is not ours to guess
        raise ValueError(f"animated image of {image.shape[0]} frames; expected a still image")
    return image


def _read_rgb_with_pil(path: Path, codec_error: Exception) -> torch.Tensor:
    """The formats TorchCodec lacks, oriented as TorchCodec orients its own (the EXIF tag)."""
    try:
        with Image.open(path) as pil:
            rgb = ImageOps.exif_transpose(pil).convert("RGB")
    except UnidentifiedImageError:
        if isinstance(codec_error, ValueError):  # TorchCodec did not recognise the format either
            raise ValueError("not an image: no JPEG, PNG, WebP, GIF, AVIF, BMP or TIFF data") from None
        raise ValueError(_reason(codec_error)) from None
    except Exception:  # PIL raises several types for a torn file of a format it knows
        raise ValueError(_reason(codec_error)) from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _reason(error: Exception) -> str:
    """TorchCodec's message without its C++ source location ("function, file.cpp:123, reason")."""
    return str(error).splitlines()[-1].split(", ")[-1] if str(error) else type(error).__name__


def decode_rgb(path: Path) -> torch.Tensor:
    """uint8 3×H×W RGB of a training image (`read_rgb`); DatasetError naming the file otherwise."""
    try:
        return read_rgb(path)
    except FileNotFoundError:
        raise DatasetError(f"missing image {path}") from None
    except ValueError as e:
        raise DatasetError(f"{path}: cannot decode the image ({e}); expected a JPEG or PNG") from None


#: PIL modes of a PNG that stores one 8-bit (or fewer) value per pixel: palette index, gray, 1-bit
MASK_MODES = ("P", "L", "1")


def decode_mask(path: Path) -> torch.Tensor:
    """uint8 1×H×W class indices from a palette or gray PNG, or an SBD `.mat`.

    A palette PNG's pixels are palette indices, and the index is the class. PIL reads them as stored;
    TorchCodec expands every palette to its RGB colours, which are not classes, so masks stay on PIL.
    The EXIF orientation is applied as TorchCodec applies it to the images (`read_rgb`)."""
    if not path.exists():
        raise DatasetError(f"missing mask {path}")
    if path.suffix == ".mat":
        try:
            seg = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        except Exception as e:  # scipy raises several types for corrupt files
            raise DatasetError(f"{path}: cannot read the SBD mask ({e}); "
                               "expected a .mat with GTcls.Segmentation") from None
        return torch.from_numpy(np.ascontiguousarray(seg, dtype=np.uint8))[None]
    try:
        with Image.open(path) as png:
            kind = png.format
            if kind == "PNG":
                ImageOps.exif_transpose(png, in_place=True)
                mode, mask = png.mode, np.array(png, dtype=np.uint8)  # a copy: writable
    except Exception as e:  # PIL raises several types for torn or foreign files
        raise DatasetError(f"{path}: cannot decode the mask ({e}); expected a palette or gray PNG") from None
    if kind != "PNG":
        raise DatasetError(f"{path}: cannot decode the mask (a {kind} file); expected a palette or gray PNG")
    if mode not in MASK_MODES:
        raise DatasetError(f"{path}: mask is a {mode} PNG; expected a palette or 8-bit gray PNG of class indices")
    return torch.from_numpy(mask)[None]


def read_ids(path: Path, what: str) -> list[str]:
    """Ids of a split file (first word of each non-empty line); an empty file is an error."""
    if not path.is_file():
        raise DatasetError(f"missing split file {path}: expected {what}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: empty split file; expected {what}, one image id per line")
    return ids


def check_files(samples: dict[str, Sample], listed_in: dict[str, Path]) -> None:
    """Every listed id has its image and mask: a split naming files that are not there is a wrong tree
    (a partial download or the wrong root), not something to train around."""
    for image_id, sample in samples.items():
        for path in (sample.image, sample.mask):
            if not path.is_file():
                missing = sum(not s.image.is_file() or not s.mask.is_file() for s in samples.values())
                raise DatasetError(f"{listed_in[image_id]}: lists {image_id} but {path} does not exist "
                                   f"({missing} of {len(samples)} listed samples have missing files)")
