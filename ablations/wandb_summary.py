"""An ablation table as one more W&B run in the table's group, beside its rows' runs."""
from __future__ import annotations

import os
from pathlib import Path

from lightning_modules.run.wandb_logger import wandb_offline

from .plan import Plan


def log_table_summary(plan: Plan, results: list[dict], markdown: Path) -> None:
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
