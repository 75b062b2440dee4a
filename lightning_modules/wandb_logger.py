"""W&B as researchers use it: offline when there are no credentials, one run per run directory."""
from __future__ import annotations

import netrc
import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from .run_record import scalars

RUN_ID_FILE = "wandb_run_id"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Offline when WANDB_MODE says so, or when no API key is configured (`wandb sync` later)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode == "disabled":  # wandb itself reads WANDB_MODE and makes a run that records nothing
        return False
    if mode in ("offline", "dryrun"):
        return True
    if mode == "online":
        return False
    return not has_wandb_credentials()


def run_id(save_dir: str | Path) -> str:
    """The W&B run id kept in the run directory: a resumed or requeued job continues the same run."""
    path = Path(save_dir) / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_id + "\n")
    return new_id


#: metric → what the run summary keeps (W&B keeps the last value unless told otherwise)
SUMMARIES = {"val/mIoU": "max", "val/pixel_accuracy": "max", "train/loss": "min"}


def offline_rows(save_dir: str | Path, run_id: str, exclude: str | Path | None = None) -> int:
    """How many history rows earlier processes of run `run_id` wrote to their offline `.wandb` files:
    1 + the highest `_step` (wandb writes its buffer in order, so what survived a kill is a prefix)."""
    from experiments.wandb_offline import read_run  # the one reader of wandb's offline file format

    held = 0
    for path in Path(save_dir).glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"):
        if exclude is not None and Path(path).resolve() == Path(exclude).resolve():
            continue
        steps = [row["_step"] for row in read_run(path).history if "_step" in row]
        held = max([held, *(int(s) + 1 for s in steps)])
    return held


class RunLogger(WandbLogger):
    """WandbLogger whose `save_dir` is the run directory: checkpoints, config, W&B files and run id.

    Project, entity, group, tags, name and job type come from the config like WandbLogger's.

    Nothing logged is lost on a kill: W&B's step (`_step`) of a logging point is its line number in the
    run's own `metrics.jsonl` (`run_record.RunRecord`), fsynced before every checkpoint. When a run starts
    or resumes, the record (rewound to the checkpoint) is handed to `sync_history`: the lines W&B does
    not hold — buffered by wandb when the process was killed — are re-sent, and those it already holds
    (logged after the checkpoint and written before the kill) are not logged again. What W&B holds is
    the resumed run's step online (wandb's own resume) and the earlier processes' `.wandb` files offline.
    Charts use `trainer/global_step` as their x axis, as with Lightning's WandbLogger.
    """

    def __init__(self, save_dir: str = "runs/default", project: str = "deeplabv3plus", name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, entity: str | None = None,
                 job_type: str = "train", log_model: bool | str = False, **kwargs) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        offline = wandb_offline()
        if offline and log_model:
            rank_zero_warn("W&B is offline: checkpoints are kept in the run directory, not uploaded as artifacts")
            log_model = False
        super().__init__(save_dir=save_dir, project=project, name=name, group=group, tags=tags, entity=entity,
                         job_type=job_type, log_model=log_model, offline=offline, id=run_id(save_dir),
                         resume="allow", **kwargs)
        self._row = 0  # W&B step of the next logging point = its line in metrics.jsonl
        self._held = 0  # rows W&B already holds from earlier processes of this run

    def rows_held(self) -> int:
        """History rows the W&B run holds from earlier processes (0 for a new or disabled run)."""
        run = self.experiment
        if run.disabled:
            return 0
        if run.offline:
            return offline_rows(self.save_dir, run.id, exclude=run.settings.sync_file)
        return run.step  # online resume: wandb continues from the server's last step

    @rank_zero_only
    def sync_history(self, records: list[dict]) -> None:
        """Make W&B hold `records` (the run record, as this process starts from it) exactly once."""
        held = self.rows_held()
        for row in range(held, len(records)):
            record = records[row]
            self.experiment.log({**record["metrics"], "trainer/global_step": record["step"]}, step=row)
        if held < len(records):
            rank_zero_info(f"W&B: re-sent {len(records) - held} logging points it had not written "
                           f"(from {self.save_dir}/metrics.jsonl)")
        self._row, self._held = len(records), held

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Numbers make one W&B row each, at step = their line in metrics.jsonl; media (images, tables)
        join the current row."""
        values = scalars(metrics)
        extra = {k: v for k, v in metrics.items() if k not in values}
        if step is not None:
            extra["trainer/global_step"] = step
        if values:
            row, self._row = self._row, self._row + 1
            if row >= self._held:
                self.experiment.log({**values, **extra}, step=row)
        elif max(self._row - 1, 0) >= self._held:
            self.experiment.log(extra, commit=False)

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
