"""A map-style dataset whose random augmentation depends only on (seed, epoch, index)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors

from . import voc
from .reading import IGNORE_INDEX, Sample


def sample_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SegmentationDataset(Dataset):
    """Items are (image uint8 3×H×W, mask uint8 H×W).

    Training keys are (index, epoch) pairs from `EpochSampler`; each draw seeds torch's RNG from
    (seed, epoch, index), so the augmentation does not depend on worker count or scheduling.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, seed: int = 0,
                 decode: Callable[[Sample], tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        #: (image, mask) of a sample, the layout's own reading (label-id mapping, class count check)
        self.decode = decode or voc.decode_sample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, mask = self.decode(self.samples[index])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0]


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and yields (index, epoch) keys for this rank.

    Lightning calls `set_epoch` at each epoch start. Each rank takes every world_size-th index of the
    same permutation, and only whole batches of `batch_size`: the tail is dropped, so ranks step in
    lockstep and the position after an epoch's last batch is the epoch's end (see `EpochPosition`).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.world_size // self.batch_size * self.batch_size

    def order(self, epoch: int) -> list[int]:
        """This rank's indices in `epoch`."""
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        return order[self.rank :: self.world_size][: len(self)]

    def __iter__(self) -> EpochPosition:
        return EpochPosition(self, self.epoch)


class EpochPosition(Iterator[tuple[int, int]]):
    """An `EpochSampler` pass: (epoch, position) is its state, which `StatefulDataLoader` saves in a checkpoint.

    Restored, it continues the saved epoch from the saved position, and a position at the epoch's end
    continues with the next epoch's first batch. Lightning resumes from a checkpoint written after an
    epoch's last batch (a SLURM requeue or step checkpoint on the boundary) by iterating the restored
    loader as the next epoch: replaying the finished pass there would yield nothing, and the run would
    silently skip an epoch of the data order.
    """

    def __init__(self, sampler: EpochSampler, epoch: int) -> None:
        self.sampler, self.epoch, self.position = sampler, epoch, 0
        self.order = sampler.order(epoch)

    def __next__(self) -> tuple[int, int]:
        if self.position >= len(self.order):
            raise StopIteration
        self.position += 1
        return self.order[self.position - 1], self.epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        if self.position >= len(self.sampler):
            self.epoch, self.position = self.epoch + 1, 0
        self.order = self.sampler.order(self.epoch)


class ShardSampler(Sampler):
    """Evaluation: rank r takes images r, r + world_size, …; no padding, so every image counts once."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]],
                image_fill: Sequence[int] = (0, 0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack full-size uint8 images of different sizes: pad bottom/right with `image_fill` (the mean pixel,
    which normalises to 0 on the device) and masks with 255, so padding never counts in the metrics.
    Bind the fill with `functools.partial(pad_collate, image_fill=mean_pixel(normalization))`."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = torch.empty(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    images[:] = torch.tensor(image_fill, dtype=images.dtype)[:, None, None]
    for out, (img, _) in zip(images, batch):
        out[:, : img.shape[-2], : img.shape[-1]] = img
    masks = [F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]), value=IGNORE_INDEX) for _, m in batch]
    return images, torch.stack(masks)
