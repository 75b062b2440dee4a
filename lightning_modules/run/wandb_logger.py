"""W&B as researchers use it: offline when there are no credentials or no server to reach, one run per run
directory."""
from __future__ import annotations

import functools
import netrc
import os
import secrets
import socket
import string
import urllib.parse
from collections import Counter
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from .checkpoints import atomic_write_text
from .record import scalars

RUN_ID_FILE = "wandb_run_id"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


#: seconds to wait for the W&B server before a run logs offline (a compute node without internet)
SERVER_TIMEOUT = 5.0


@functools.cache
def server_unreachable() -> str | None:
    """Why the W&B server (WANDB_BASE_URL, else W&B's cloud) cannot be reached within SERVER_TIMEOUT; None if
    it can. Asked once per process: wandb.init itself would retry for minutes, then stop the run."""
    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=SERVER_TIMEOUT).close()
        return None
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e}"


def offline_reason() -> str | None:
    """Why this process logs offline: WANDB_MODE says so, no API key is configured, or the server cannot be
    reached (`wandb sync` later). None: online, or W&B disabled (WANDB_MODE=disabled, which wandb reads itself)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode == "disabled":
        return None
    if mode in ("offline", "dryrun"):
        return f"WANDB_MODE={mode}"
    if mode != "online" and not has_wandb_credentials():
        return "no W&B credentials"
    unreachable = server_unreachable()
    return f"no W&B server at {unreachable}" if unreachable else None


def wandb_offline() -> bool:
    return offline_reason() is not None


def run_id(save_dir: str | Path) -> str:
    """The W&B run id kept in the run directory: a resumed or requeued job continues the same run."""
    path = Path(save_dir) / RUN_ID_FILE
    kept = path.read_text().strip() if path.exists() else ""
    if kept.isalnum():  # an empty or damaged file (a crash before it was atomic) gets a new id
        return kept
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, new_id + "\n")
    return new_id


#: metric → what the run summary keeps (W&B keeps the last value unless told otherwise)
SUMMARIES = {"val/mIoU": "max", "val/pixel_accuracy": "max", "train/loss": "min"}


def held_points(rows) -> Counter:
    """(trainer step, metric name) of every number in W&B history rows, counted."""
    held = Counter()
    for row in rows:
        step = row.get("trainer/global_step")
        for key in scalars({k: v for k, v in row.items() if not k.startswith("_") and k != "trainer/global_step"}):
            held[(step, key)] += 1
    return held


def offline_history(save_dir: str | Path, run_id: str, exclude: str | Path | None = None) -> list[dict]:
    """The history rows earlier processes of run `run_id` wrote to their offline `.wandb` files."""
    from .wandb_offline import read_run  # the one reader of wandb's offline file format

    rows = []
    for path in sorted(Path(save_dir).glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb")):
        if exclude is not None and path.resolve() == Path(exclude).resolve():
            continue
        try:
            rows += read_run(path).history
        except ValueError:  # killed before wandb wrote the file's header: it holds nothing
            continue
    return rows


class RunLogger(WandbLogger):
    """WandbLogger whose `save_dir` is the run directory: checkpoints, config, W&B files and run id.

    Project, entity, group, tags, name and job type come from the config like WandbLogger's.

    Nothing logged is lost on a kill. wandb buffers what it is given, so a killed process can leave W&B
    without its last logging points (online: not sent; offline: not written), and with logging points
    from after the checkpoint that the resumed run logs again. When a run starts, `sync_history` compares
    what the W&B run holds — (trainer step, metric) pairs of the earlier processes' `.wandb` files
    offline, of the server's history online — with the run's own record (`run.record.RunRecord`'s
    `metrics.jsonl`, rewound to the checkpoint): what W&B lacks is re-sent, and what it holds beyond
    the record is not logged again when the resumed run reaches it. Every logged step is in the W&B
    history exactly once, with no rewind (a private-preview W&B feature, not available offline).
    """

    def __init__(self, save_dir: str = "runs/default", project: str = "deeplabv3plus", name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, entity: str | None = None,
                 job_type: str = "train", log_model: bool | str = False, **kwargs) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        reason = offline_reason()
        offline = reason is not None
        if offline and not reason.startswith("WANDB_MODE"):  # asked for offline: nothing to say
            rank_zero_info(f"W&B: logging offline ({reason}) in {save_dir}/wandb; upload it later with "
                           f"`wandb sync {save_dir}/wandb/offline-run-*`")
        if offline and log_model:
            rank_zero_warn("W&B is offline: checkpoints are kept in the run directory, not uploaded as artifacts")
            log_model = False
        super().__init__(save_dir=save_dir, project=project, name=name, group=group, tags=tags, entity=entity,
                         job_type=job_type, log_model=log_model, offline=offline, id=run_id(save_dir),
                         resume="allow", **kwargs)
        self._held = Counter()  # what W&B holds beyond the run record: not logged again

    def held_history(self) -> Counter:
        """(trainer step, metric) pairs the W&B run holds from earlier processes of this run."""
        run = self.experiment
        if run.disabled:
            return Counter()
        if run.offline:
            return held_points(offline_history(self.save_dir, run.id, exclude=run.settings.sync_file))
        if not run.resumed:
            return Counter()
        try:
            import wandb

            return held_points(wandb.Api().run(run.path).scan_history())
        except Exception as e:  # a server without the public API: nothing re-sent, nothing skipped
            rank_zero_warn(f"W&B: cannot read the history of run {run.path} ({e}); not checking it against "
                           f"{self.save_dir}/metrics.jsonl")
            return Counter()

    @rank_zero_only
    def sync_history(self, records: list[dict]) -> None:
        """Make the W&B history hold `records` (the run record as this process starts from it) once."""
        held = self.held_history()
        resent = 0
        for record in records:
            missing = {}
            for key, value in record["metrics"].items():
                if held[(record["step"], key)] > 0:
                    held[(record["step"], key)] -= 1
                else:
                    missing[key] = value
            if missing:
                super().log_metrics(missing, record["step"])
                resent += 1
        if resent:
            rank_zero_info(f"W&B: re-sent {resent} logging points it had not written (from metrics.jsonl)")
        self._held = +held

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Lightning's, less the numbers W&B already holds from the killed process at this step."""
        if self._held:
            numbers = scalars(metrics)
            kept = {}
            for key, value in metrics.items():
                if key in numbers and self._held[(step, key)] > 0:
                    self._held[(step, key)] -= 1
                else:
                    kept[key] = value
            self._held = +self._held
            if not kept:
                return
            metrics = kept
        super().log_metrics(metrics, step)

    @property
    def wandb_run_id(self) -> str | None:
        """The W&B run id, None when W&B is disabled (`WANDB_MODE=disabled`)."""
        return None if self.experiment.disabled else self.experiment.id

    @property
    def experiment(self):
        run = WandbLogger.experiment.fget(self)
        if rank_zero_only.rank == 0 and not getattr(self, "_summaries_defined", False):
            for metric, summary in SUMMARIES.items():
                run.define_metric(metric, summary=summary)
            self._summaries_defined = True
        return run
