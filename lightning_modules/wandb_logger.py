"""W&B as researchers use it: offline when there are no credentials, one run per run directory."""
from __future__ import annotations

import netrc
import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

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


class RunLogger(WandbLogger):
    """WandbLogger whose `save_dir` is the run directory: checkpoints, config, W&B files and run id.

    Project, entity, group, tags, name and job type come from the config like WandbLogger's.
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

    @property
    def experiment(self):
        run = WandbLogger.experiment.fget(self)
        if rank_zero_only.rank == 0 and not getattr(self, "_summaries_defined", False):
            for metric, summary in SUMMARIES.items():
                run.define_metric(metric, summary=summary)
            self._summaries_defined = True
        return run


def log_table_summary(plan, results: list[dict], markdown: Path) -> None:
    """An ablation table and its plot as one more run in the table's group (job type `summary`)."""
    import wandb

    mode = os.environ.get("WANDB_MODE", "").lower()
    run = wandb.init(project=plan.project, group=plan.table.name, job_type="summary",
                     name=f"{plan.table.name}/summary", dir=str(plan.work), tags=[plan.table.name, plan.profile],
                     mode="disabled" if mode == "disabled" else "offline" if wandb_offline() else "online",
                     config={"seeds": plan.seeds, "profile": plan.profile})
    columns = list(results[0].keys())
    run.log({"results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in results]),
             "miou_vs_multiply_adds": wandb.Image(str(markdown.with_suffix(".png")))})
    run.finish()
