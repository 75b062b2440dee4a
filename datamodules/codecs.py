"""Image decoding and encoding: TorchCodec's, or torchvision.io's where no TorchCodec with image codecs loads.

TorchCodec's image codecs are recent, and each TorchCodec release is built for one torch release, so an
environment with another torch than requirements.txt's may have no TorchCodec that loads. It gets
torchvision's functions, which torchvision deprecates in favour of TorchCodec but still ships; `BACKEND`
says which one this process uses.
Both decode to uint8 3×H×W RGB with the EXIF orientation applied.
"""
from __future__ import annotations

from pathlib import Path

import torch

try:
    from torchcodec.decoders import decode_image as _torchcodec_decode
    from torchcodec.encoders import JpegEncoder, PngEncoder

    BACKEND = "torchcodec"
except (ImportError, OSError, RuntimeError):  # absent, too old, or its native library built for another torch
    import torchvision.io as _torchvision_io

    BACKEND = "torchvision.io"


def decode_image(path: Path) -> torch.Tensor:
    """uint8 3×H×W RGB; RuntimeError or ValueError for data the decoder cannot read."""
    if BACKEND == "torchcodec":
        return _torchcodec_decode(path, mode="RGB")
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    return _torchvision_io.decode_image(str(path), mode=_torchvision_io.ImageReadMode.RGB,
                                        apply_exif_orientation=True)


def write_jpeg(path: Path, image: torch.Tensor, quality: int = 90) -> None:
    """uint8 C×H×W (1 or 3 channels)."""
    if BACKEND == "torchcodec":
        JpegEncoder(image).to_file(path, quality=quality)
    else:
        _torchvision_io.write_jpeg(image, str(path), quality=quality)


def write_png(path: Path, image: torch.Tensor) -> None:
    """uint8 C×H×W (1 or 3 channels)."""
    if BACKEND == "torchcodec":
        PngEncoder(image).to_file(path)
    else:
        _torchvision_io.write_png(image, str(path))
