"""An ablation table as one more W&B run in the table's group, beside its rows' runs."""
from __future__ import annotations

import os
from pathlib import Path

from lightning_modules.run.wandb_logger import wandb_offline

from .plan import Plan
from .report import COLUMNS, trimap_plot


def log_table_summary(plan: Plan, results: list[dict], markdown: Path) -> None:
    """An ablation table (paired differences to the baseline rows included) and its plots as one more run in the table's group (job type `summary`)."""
    import wandb

    mode = os.environ.get("WANDB_MODE", "").lower()
    run = wandb.init(project=plan.project, group=plan.table.name, job_type="summary",
                     name=f"{plan.table.name}/summary", dir=str(plan.work), tags=[plan.table.name, plan.profile],
                     mode="disabled" if mode == "disabled" else "offline" if wandb_offline() else "online",
                     config={"seeds": plan.seeds, "profile": plan.profile})
    columns = COLUMNS
    pictures = {"miou_vs_multiply_adds": wandb.Image(str(markdown.with_suffix(".png")))}
    trimap = trimap_plot(markdown.with_suffix(""))
    if trimap.exists():
        pictures["trimap_mIoU_curves"] = wandb.Image(str(trimap))
    run.log({"results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in results]), **pictures})
    for r in results:  # each row's paired difference to its baseline, as summary numbers beside the table
        for key in ("delta_mIoU", "delta_mIoU_ci_low", "delta_mIoU_ci_high", "trimap_delta", "trimap_delta_ci_low",
                    "trimap_delta_ci_high"):
            if r.get(key) is not None:
                run.summary[f"{key}/{r['row']}"] = r[key]
    run.finish()
