"""Reporting a table from whatever is done: ours beside the paper's, mean ± std over seeds, as
`<table>.md`, `.csv` and a plot of mIoU against Multiply-Adds (with error bars), and a W&B summary run.

Read from each evaluation's `results.json` only (works with `WANDB_MODE=disabled` and any W&B server).
"""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

from lightning_modules.components.complexity import MULTIPLY_ADDS, MULTIPLY_ADDS_TF

from .plan import Job, Plan

MIOU = "val/mIoU"
COLUMNS = ["row", "paper_mIoU", "ours_mIoU", "ours_mIoU_std", "seeds", "diff_mIoU", "paper_multiply_adds",
           "ours_multiply_adds_tf", "ours_multiply_adds", "diff_multiply_adds", "git_commits", "checkpoints", "note"]


def aggregate(plan: Plan) -> list[dict]:
    """One entry per row of the table: the paper's numbers, ours over the seeds that are done."""
    evaluations: dict[str, list[Job]] = {}
    for job in plan.jobs():
        if job.kind == "eval":
            evaluations.setdefault(job.row, []).append(job)
    results = []
    for row in plan.table.rows:
        entry: dict = {"row": row.name, "paper_mIoU": row.paper_miou, "paper_multiply_adds": row.paper_multiply_adds,
                       "note": row.note, "ours_mIoU": None, "ours_mIoU_std": None, "seeds": 0,
                       "ours_multiply_adds_tf": None, "ours_multiply_adds": None, "git_commits": "", "checkpoints": ""}
        if row.reproducible:
            cost = plan.cost(row)
            entry.update(ours_multiply_adds_tf=cost[MULTIPLY_ADDS_TF], ours_multiply_adds=cost[MULTIPLY_ADDS])
            done = [job.results() for job in evaluations.get(row.name, []) if job.done]
            scores = [100 * r["metrics"][MIOU] for r in done if MIOU in r.get("metrics", {})]
            if scores:
                entry.update(ours_mIoU=statistics.fmean(scores), seeds=len(scores),
                             ours_mIoU_std=statistics.stdev(scores) if len(scores) > 1 else 0.0,
                             git_commits=" ".join(sorted({str(r.get("git_commit")) for r in done})),
                             checkpoints=" ".join(str(r.get("checkpoint")) for r in done))
        for metric, ours in (("mIoU", "ours_mIoU"), ("multiply_adds", "ours_multiply_adds_tf")):
            paper = entry[f"paper_{metric}"]
            entry[f"diff_{metric}"] = None if entry[ours] is None or paper is None else entry[ours] - paper
        results.append(entry)
    return results


def is_partial(plan: Plan, results: list[dict]) -> bool:
    return any(r["seeds"] < len(plan.seeds) for r in results if r["ours_multiply_adds"] is not None)


def _fmt(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def _miou(entry: dict) -> str:
    if entry["ours_mIoU"] is None:
        return "-"
    if entry["seeds"] > 1:
        return f"{entry['ours_mIoU']:.2f} ± {entry['ours_mIoU_std']:.2f}% (n={entry['seeds']})"
    return f"{entry['ours_mIoU']:.2f}%"


def write(plan: Plan, results: list[dict]) -> Path:
    """`<stem>.csv`, `.md` and `.png`; returns the `.md` path."""
    stem = plan.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    done = sum(1 for r in results if r["seeds"])
    reproducible = sum(1 for r in results if r["ours_multiply_adds"] is not None)
    partial = f" — partial: {done} of {reproducible} rows done" if is_partial(plan, results) else ""
    md = [f"# {plan.table.title} (profile: {plan.profile}, seeds {','.join(map(str, plan.seeds))}){partial}", "",
          "| row | paper mIoU | ours mIoU | Δ | paper MAdds | ours MAdds (TF) | ours MAdds (plain) | Δ | note |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['row']} | {_fmt(r['paper_mIoU'], '%')} | {_miou(r)} | {_fmt(r['diff_mIoU'])} | "
                  f"{_fmt(r['paper_multiply_adds'], 'B')} | {_fmt(r['ours_multiply_adds_tf'], 'B')} | "
                  f"{_fmt(r['ours_multiply_adds'], 'B')} | {_fmt(r['diff_multiply_adds'])} | {r['note']} |")
    md += ["", "Ours: mean ± sample standard deviation over the seeds done (n). Multiply-Adds at 513×513 for the "
               "whole evaluation protocol; TF = counted as the paper's tfprof counted the official graph."]
    if plan.profile == "smoke":
        md += ["", "Smoke profile: MobileNetV2 from scratch on generated data for a few steps — it checks the "
                   "plumbing; its numbers are not comparable with the paper's."]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(plan, results, stem.with_suffix(".png"))
    return stem.with_suffix(".md")


def plot(plan: Plan, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Tables 1 and 2 print no Multiply-Adds: their paper points sit at our count for the same row
    paper = [(r["paper_multiply_adds"] or r["ours_multiply_adds_tf"], r["paper_mIoU"], r["row"]) for r in results
             if r["paper_mIoU"] is not None and (r["paper_multiply_adds"] or r["ours_multiply_adds_tf"])]
    ours = [(r["ours_multiply_adds_tf"], r["ours_mIoU"], r["ours_mIoU_std"], r["row"]) for r in results if r["seeds"]]
    if paper:
        ax.scatter([p[0] for p in paper], [p[1] for p in paper], marker="o", label="paper")
    if ours:
        ax.errorbar([p[0] for p in ours], [p[1] for p in ours], yerr=[p[2] for p in ours], fmt="s", capsize=3,
                    label=f"ours (mean ± std, {len(plan.seeds)} seed{'s' if len(plan.seeds) > 1 else ''})")
    for x, y, name in [(p[0], p[1], p[2]) for p in paper] + [(p[0], p[1], p[3]) for p in ours]:
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("Multiply-Adds (billions, 513×513, evaluation protocol, TF count)")
    ax.set_ylabel("VOC 2012 val mIoU (%)")
    ax.set_title(f"{plan.table.title} ({plan.profile})", fontsize=9)
    if paper or ours:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
