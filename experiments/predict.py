"""Segment your own images with a trained checkpoint.

    python -m experiments.predict --ckpt_path runs/quickstart/.../last.ckpt --input photos/ --output masks/
    python -m experiments.predict --ckpt_path ... --input 'photos/*.jpg' a.png --output out --overlay \
        --output_stride 8 --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip

For each image, OUTPUT/<name>.png holds the class index of every pixel at the image's own size, as a
palette PNG in the dataset's colours (open it in any viewer; read the indices with PIL,
`np.array(Image.open(path))`); `--overlay` adds OUTPUT/<name>_overlay.jpg. Inputs are files, folders
(their images, not recursive) or glob patterns. Gray, RGBA, CMYK, 16-bit and EXIF-rotated images are read
as the RGB image a viewer shows. Evaluation is the `validate` path (`predict_probabilities`, aligned
canvas); a large image is run as it is unless `--tile` scores it window by window (windows of the training
crop, or `--tile_size`, overlapping by `--tile_overlap`: memory follows the window, not the image) or
`--max_side` downscales it (the mask is still written at the image's size). An unreadable file is named in
a warning and skipped.

    python -m experiments.predict --ckpt_path CKPT --voc_test data/voc --output submission/

`--voc_test ROOT` segments the VOC 2012 test split (ImageSets/Segmentation/test.txt) under the paper's test
protocol (output stride 8, scales 0.5…1.75, flip, 513 canvas; each flag above overrides its part) into
OUTPUT/results/VOC2012/Segmentation/comp6_test_cls/<id>.png, packs OUTPUT/results.tar.gz, checks it and says
where to upload it (`experiments.submission`).
"""
from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from datamodules import voc
from datamodules.reading import DatasetError, LabelSpace, read_rgb
from datamodules.transforms import NORMALIZATIONS
from experiments import submission
from experiments.cli.checks import check_output_path, check_tiling
from experiments.cli.errors import ConfigError
from lightning_modules.components.protocol import PAPER_CROP, EvalProtocol
from lightning_modules.components.inference import DEFAULT_TILE_OVERLAP, Tiling, labels_from, predict_labels, \
    predict_probabilities
from lightning_modules.pretrained import load_model

#: what a folder contributes (a file named explicitly is tried whatever its suffix)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
#: an image with this many times the pixels of the training crop gets a one-line hint to use --tile
TILE_HINT_AREA = 16


def list_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(image files in order, one warning per input that matched nothing)."""
    files, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
        if not found:
            problems.append(f"{item}: no such file, or no images in it")
        files += found
    return list(dict.fromkeys(files)), problems


def normalize(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """uint8 N×3×H×W → the float input the backbone was trained on."""
    mean, std = NORMALIZATIONS[normalization]
    return TF.normalize(images.float().div_(255), mean, std, inplace=True)


@torch.no_grad()
def segment(net: torch.nn.Module, images: torch.Tensor, protocol: EvalProtocol,
            max_side: int | None = None, tiling: Tiling | None = None) -> torch.Tensor:
    """N×H×W class indices of uint8 N×3×H×W images (all one size) under a resolved `protocol`.

    With `max_side`, an image whose longer side exceeds it is downscaled for the network and the class
    probabilities are resized back to the image's size. With `tiling`, an image larger than a window is
    scored window by window (a progress bar over the windows) and its labels are taken strip by strip."""
    h, w = images.shape[-2:]
    x = normalize(images, net.normalization)
    if tiling is not None:
        return predict_labels(net, x, protocol, tiling, progress=True)
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                          align_corners=False, antialias=True)
    probs = predict_probabilities(net, x, protocol)
    if probs.shape[-2:] != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return labels_from(probs)


def save_mask(labels: torch.Tensor, labelspace: LabelSpace, path: Path) -> None:
    png = Image.fromarray(labels.to(torch.uint8).cpu().numpy(), mode="P")
    png.putpalette(labelspace.png_palette())
    png.save(path)


def save_overlay(image: torch.Tensor, labels: torch.Tensor, labelspace: LabelSpace, path: Path,
                 alpha: float = 0.5) -> None:
    colors = torch.tensor(labelspace.palette + ((255, 255, 255),), dtype=torch.float32)
    painted = colors[labels.cpu().long().clamp(max=len(labelspace.palette))].permute(2, 0, 1)
    blend = (image.float() * (1 - alpha) + painted * alpha).round().clamp(0, 255).to(torch.uint8)
    Image.fromarray(blend.permute(1, 2, 0).numpy()).save(path, quality=90)


def batches(paths: Sequence[Path], batch_size: int, skipped: list[str]) -> Iterator[list[tuple[Path, torch.Tensor]]]:
    """Consecutive readable images of one size, up to `batch_size` together; unreadable ones go to `skipped`."""
    batch: list[tuple[Path, torch.Tensor]] = []
    for path in paths:
        try:
            image = read_rgb(path)
        except (OSError, ValueError) as e:
            skipped.append(f"{path}: cannot read the image ({e})")
            continue
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((path, image))
    if batch:
        yield batch


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """`<stem>` per input; inputs sharing a stem (a.jpg, a.png, two folders) get `<stem>_2`, `_3`, …"""
    names, used = {}, set()
    for path in paths:
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}"
        used.add(name)
        names[path] = name
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by experiments.train")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    source.add_argument("--voc_test", metavar="ROOT", help="the VOC 2012 test split under ROOT (holding VOCdevkit/): "
                        "masks and a checked archive for the evaluation server, under the paper's test protocol")
    parser.add_argument("--output", required=True, help="directory for <name>.png (and <name>_overlay.jpg)")
    parser.add_argument("--overlay", action="store_true", help="also write the image with the mask blended in")
    parser.add_argument("--output_stride", type=int, choices=(8, 16, 32), default=None,
                        help="evaluation output stride (default: the training output stride; 8 with --voc_test)")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="multi-scale inputs, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (default: 1.0; those with --voc_test)")
    parser.add_argument("--flip", action="store_const", const=True, default=None,
                        help="add left-right flipped inputs (default with --voc_test)")
    parser.add_argument("--no_flip", dest="flip", action="store_const", const=False, help="no flipped inputs")
    parser.add_argument("--canvas", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="smallest evaluation canvas (official: 513 513 for VOC, 1025 2049 for Cityscapes); "
                             "default: the smallest aligned canvas holding the image; 513 513 with --voc_test")
    parser.add_argument("--max_side", type=int, default=None,
                        help="downscale images whose longer side is larger than this for the network (default: never)")
    parser.add_argument("--tile", action="store_true",
                        help="score images larger than a window with overlapping sliding windows (large images)")
    parser.add_argument("--tile_size", type=int, default=None,
                        help="window side in pixels (default: the checkpoint's training crop)")
    parser.add_argument("--tile_overlap", type=float, default=DEFAULT_TILE_OVERLAP,
                        help="overlap of neighbouring windows, a fraction of the window in [0, 1) (default 1/3)")
    parser.add_argument("--batch_size", type=int, default=4, help="images of one size run together")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    protocol_defaults = submission.TEST_PROTOCOL if args.voc_test else {"scales": [1.0], "flip": False}
    for name, value in protocol_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    test_images: dict[str, Path] = {}
    paths, skipped = ([], []) if args.voc_test else list_inputs(args.input)
    try:  # the paths first: nothing is loaded or written for a run that cannot finish
        check_output_path("--output", args.output, directory=True)
        if args.voc_test:
            if args.overlay:
                raise ConfigError("--overlay", "not with --voc_test: the archive must hold the masks only")
            try:
                test_images = voc.list_test_images(args.voc_test)
            except DatasetError as e:
                raise ConfigError("--voc_test", str(e)) from None
            paths = list(test_images.values())
        elif not paths:
            raise ConfigError("--input", f"expected image files, folders or glob patterns; {'; '.join(skipped)}")
        if args.tile and args.max_side:
            raise ConfigError("--max_side", "expected without --tile (tiling scores the image at full resolution)")
        net = load_model(args.ckpt_path, map_location=args.device)
        protocol = EvalProtocol(args.output_stride, tuple(args.scales), args.flip,
                                tuple(args.canvas) if args.canvas else None).resolve(net.output_stride)
        check_tiling("--tile_size", args.tile_size, "--tile_overlap", args.tile_overlap, protocol.output_stride)
        crop = args.tile_size or getattr(net, "training_crop", None) or PAPER_CROP
        tiling = Tiling(crop, args.tile_overlap) if args.tile else None
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    net.set_output_stride(protocol.output_stride)
    out = Path(args.output) / submission.RESULTS_DIR if args.voc_test else Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(paths)
    written, hinted = 0, False
    with tqdm(total=len(paths), unit="image", disable=len(paths) < 2, file=sys.stderr) as bar:
        for batch in batches(paths, args.batch_size, skipped):
            images = torch.stack([image for _, image in batch]).to(args.device)
            if not (args.tile or args.max_side or hinted) and images[0, 0].numel() > TILE_HINT_AREA * crop ** 2:
                hinted = True
                print(f"note: {batch[0][0]} is {images.shape[-1]}×{images.shape[-2]}, far larger than the "
                      f"{crop}px training crop; --tile scores it window by window in far less memory", file=sys.stderr)
            labels = segment(net, images, protocol, args.max_side, tiling)
            for (path, image), mask in zip(batch, labels):
                save_mask(mask, net.labels, out / f"{names[path]}.png")
                if args.overlay:
                    save_overlay(image, mask, net.labels, out / f"{names[path]}_overlay.jpg")
                written += 1
            bar.update(written + len(skipped) - bar.n)  # unreadable files count as done too
    for problem in skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    how = protocol.describe() + (f", {tiling.describe()}" if tiling else "")
    print(f"wrote {written} masks to {out} ({how}); skipped {len(skipped)} unreadable inputs")
    if args.voc_test:
        archive = submission.write_archive(Path(args.output))
        problems = submission.check_archive(archive, test_images, net.labels.num_classes)
        for problem in problems:
            print(f"error: {archive}: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(submission.upload_instructions(archive, len(test_images)))
    return 0 if written or not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
