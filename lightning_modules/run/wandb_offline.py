"""Read an offline W&B run (`run-*.wandb`, a log of `wandb_internal_pb2.Record`s) without a server.

Why this reads W&B's internal format: wandb has no public reader of offline runs. Its public `wandb.Api`
reads runs from a server only, and `wandb sync` uploads them; the Python reader it once shipped
(`wandb.sdk.internal.datastore`) is gone from wandb 0.31. A resumed offline run needs the history its
earlier processes logged (`RunLogger.held_history`), and the ablation runner and the tests read what a
run logged, so this module is the one place that knows the file: the record framing (below) and
wandb's `Record` protobuf. A wandb release that changes either makes `read_run` raise
`WandbFormatError` naming this module, and `tests/test_wandb_offline.py` fails with that message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import struct
import zlib

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

# The `.wandb` file is a LevelDB-style log: a 7-byte file header (":W&B", magic 0xBEE1, version 0),
# then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type FULL/FIRST/MIDDLE/LAST).
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_MAGIC, _VERSION = 0xBEE1, 0


class WandbFormatError(RuntimeError):
    """The installed wandb writes offline runs in a format this reader does not know."""

    def __init__(self, path: str | Path, what: str) -> None:
        import wandb

        super().__init__(f"{path}: {what}; wandb {wandb.__version__} changed its offline run format, which "
                         "lightning_modules/run/wandb_offline.py reads (wandb has no public reader): update it")


@dataclass
class OfflineRun:
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    #: wandb wrote the run's exit record: the process finished the run (a killed one's file lacks it, and a
    #: finished one's gets it last, when wandb-core is done writing)
    finished: bool = False

    def metric(self, key: str) -> list[tuple[int, float]]:
        """(trainer/global_step or _step, value) for every history row that has `key`."""
        return [(row.get("trainer/global_step", row.get("_step")), row[key]) for row in self.history if key in row]


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _records(data: bytes, path: str | Path = "<bytes>"):
    """Yield the payload of every complete record; a torn tail (process killed mid-write) is ignored."""
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (missing ':W&B' header)")
    if len(data) >= _HEADER:
        magic, version = struct.unpack("<HB", data[4:_HEADER])
        if (magic, version) != (_MAGIC, _VERSION):
            raise WandbFormatError(path, f"file header magic {magic:#x} version {version}, expected "
                                         f"{_MAGIC:#x} version {_VERSION}")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # block trailer padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        payload = data[pos + _HEADER : pos + _HEADER + length]
        if kind == 0 or len(payload) < length or zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            break
        pos += _HEADER + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""


def read_run(path: str | Path) -> OfflineRun:
    """Parse one `run-<id>.wandb` file (a process killed before wandb flushed leaves only the header)."""
    run = OfflineRun(run_id=Path(path).stem.removeprefix("run-"))
    for data in _records(Path(path).read_bytes(), path):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(data)
        except DecodeError as e:
            raise WandbFormatError(path, f"a record is not a wandb_internal_pb2.Record ({e})") from None
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group, run.job_type = r.run_id, r.project, r.run_group, r.job_type
            run.tags = list(r.tags)
            for item in r.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            run.finished = True
    return run


def read_runs(run_dir: str | Path) -> list[OfflineRun]:
    """Every offline run file under a run directory, oldest first (a resumed run has one per process)."""
    files = sorted(Path(run_dir).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
    return [read_run(p) for p in files]
