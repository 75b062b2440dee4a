"""`--check` of a dataset tree (VOC, Cityscapes, folder): every defect in one pass, not just the first.

Each split is listed without stopping at a missing file, every sample is checked once (a sample in two
splits, as VOC train in trainaug, is decoded once), and the defects are printed by kind — the first
`SHOWN` of each kind, with how many there are — before the exit status says whether the tree is usable.
"""
from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .reading import IGNORE_INDEX, DatasetError, Sample

#: defects printed per kind (the rest are counted)
SHOWN = 20


@lru_cache(maxsize=64)
def _names(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in directory.iterdir())) if directory.is_dir() else ()


def closest_file(path: Path) -> Path | None:
    """The file in `path`'s directory whose name holds `path`'s stem and is otherwise nearest to its name
    (`a_mask.png` or `a.PNG` for a missing `a.png`), None if there is none: another id is never offered."""
    stem = path.stem.lower()
    candidates = [name for name in _names(path.parent) if stem in name.lower()]
    match = difflib.get_close_matches(path.name, candidates, n=1, cutoff=0.0)
    return path.parent / match[0] if match else None


def missing_file(path: Path, what: str) -> str:
    """'missing mask X (closest there: Y)'."""
    closest = closest_file(path)
    return f"missing {what} {path}" + (f" (closest there: {closest.name})" if closest else "")


@dataclass
class Defects:
    """Defects found so far, by kind ("missing mask", "bad image", …), in the order they were found."""

    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, message: str) -> None:
        self.found.setdefault(kind, []).append(message)

    @property
    def count(self) -> int:
        return sum(len(messages) for messages in self.found.values())

    def print(self, file=None) -> None:
        file = file or sys.stderr
        for kind, messages in self.found.items():
            shown = "" if len(messages) <= SHOWN else f", the first {SHOWN} shown"
            print(f"{kind}: {len(messages)}{shown}", file=file)
            for message in messages[:SHOWN]:
                print(f"  {message}", file=file)


#: the defect of a mask whose every pixel is ignored: it teaches nothing and scores nothing
UNLABELLED = "mask with no labelled pixel"


def check_sample(sample: Sample, decode: Callable[[Sample], tuple], defects: Defects) -> str | None:
    """Record what is wrong with one sample (missing files, the decoder's DatasetError, a mask with nothing
    labelled); the kind of its defect, None if nothing."""
    missing = None
    for path, what in ((sample.image, "image"), (sample.mask, "mask")):
        if not path.is_file():
            missing = f"missing {what}"
            defects.add(missing, missing_file(path, what))
    if missing:
        return missing
    try:
        _, mask = decode(sample)
    except DatasetError as e:  # every decoding message starts with the file it is about
        kind = "bad image" if str(e).startswith(str(sample.image)) else "bad mask"
        defects.add(kind, str(e))
        return kind
    if not (mask != IGNORE_INDEX).any():
        defects.add(UNLABELLED, f"{sample.mask}: every pixel is {IGNORE_INDEX} (ignored)")
        return UNLABELLED
    return None


def check_splits(list_split: Callable[[str], Sequence[Sample]], decode: Callable[[Sample], tuple],
                 splits: Iterable[str], optional: Callable[[DatasetError], bool] = lambda e: False) -> int:
    """`--check`: list and decode every split, print per split its sample count, then every defect by
    kind; exit status 1 if there is any. `list_split` must not stop at missing files (they are reported
    here). A split that cannot be listed at all is a defect too, unless `optional(error)` says the split
    is simply not available (VOC trainaug without SBD)."""
    defects, checked = Defects(), {}
    for split in splits:
        try:
            samples = list_split(split)
        except DatasetError as e:
            if optional(e):
                print(f"{split}: not available ({e})")
            else:
                defects.add("unusable split", f"{split}: {e}")
            continue
        for sample in samples:
            if sample not in checked:
                checked[sample] = check_sample(sample, decode, defects)
        kinds = [checked[sample] for sample in samples]
        bad = sum(kind is not None for kind in kinds)
        print(f"{split}: {len(samples)} samples" + (f", {bad} with defects" if bad else " OK"))
        if kinds and kinds.count(UNLABELLED) == len(kinds):
            defects.add("unusable split", f"{split}: no mask has a labelled pixel: nothing to learn or score")
    if defects.count:
        defects.print()
        print(f"error: {defects.count} defects in {sum(kind is not None for kind in checked.values())} samples", file=sys.stderr)
        return 1
    return 0
