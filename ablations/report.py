"""Reporting a table from whatever is done: ours beside the paper's, mean ± std over seeds, each row's paired
difference to the table's baseline row with its 95% interval, as `<table>.md`, `.csv` and a plot of mIoU
against Multiply-Adds and of the differences, and a W&B summary run. Where the evaluations logged the trimap
mIoU (`val/trimap_mIoU/<w>`), the rows' curves against band width go in `<table>-trimap.png` and each row's
difference to its baseline at the narrowest band beside the paper's (Figure 5).

Read from each evaluation's `results.json` only (works with `WANDB_MODE=disabled` and any W&B server).
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from scipy import stats

from lightning_modules.components.complexity import MULTIPLY_ADDS, MULTIPLY_ADDS_TF

from .plan import Job, Plan

MIOU = "val/mIoU"
TRIMAP = "val/trimap_mIoU/"
COLUMNS = ["row", "paper_mIoU", "ours_mIoU", "ours_mIoU_std", "seeds", "diff_mIoU", "baseline", "delta_mIoU",
           "delta_mIoU_ci_low", "delta_mIoU_ci_high", "delta_seeds", "paper_multiply_adds", "ours_multiply_adds_tf",
           "ours_multiply_adds", "diff_multiply_adds", "trimap_width", "trimap_mIoU", "trimap_delta",
           "trimap_delta_ci_low", "trimap_delta_ci_high", "paper_trimap_delta", "git_commits", "checkpoints", "note"]


def paired_delta(scores: dict[int, float], baseline: dict[int, float]) -> dict:
    """Mean difference over the seeds both ran, and its 95% interval by a paired t over seeds (None: one seed)."""
    seeds = sorted(set(scores) & set(baseline))
    diffs = [scores[s] - baseline[s] for s in seeds]
    if not diffs:
        return {"delta": None, "low": None, "high": None, "n": 0}
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"delta": mean, "low": None, "high": None, "n": 1}
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"delta": mean, "low": mean - half, "high": mean + half, "n": len(diffs)}


def _trimap(metrics: dict) -> dict[int, float]:
    """Band width → trimap mIoU (%) of one evaluation."""
    return {int(k[len(TRIMAP):]): 100 * v for k, v in metrics.items()
            if k.startswith(TRIMAP) and k[len(TRIMAP):].isdigit() and v == v}


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
                       "ours_multiply_adds_tf": None, "ours_multiply_adds": None, "git_commits": "", "checkpoints": "",
                       "baseline": plan.table.baseline_of(row), "paper_trimap_delta": row.paper_trimap_gain,
                       "per_seed": {}, "trimap_per_seed": {}}
        if row.reproducible:
            cost = plan.cost(row)
            entry.update(ours_multiply_adds_tf=cost[MULTIPLY_ADDS_TF], ours_multiply_adds=cost[MULTIPLY_ADDS])
            done_jobs = [job for job in evaluations.get(row.name, []) if job.done]
            done = [job.results() for job in done_jobs]
            scores = [100 * r["metrics"][MIOU] for r in done if MIOU in r.get("metrics", {})]
            entry["per_seed"] = {job.seed: 100 * r["metrics"][MIOU] for job, r in zip(done_jobs, done)
                                 if MIOU in r.get("metrics", {})}
            entry["trimap_per_seed"] = {job.seed: _trimap(r.get("metrics", {})) for job, r in zip(done_jobs, done)}
            if scores:
                entry.update(ours_mIoU=statistics.fmean(scores), seeds=len(scores),
                             ours_mIoU_std=statistics.stdev(scores) if len(scores) > 1 else 0.0,
                             git_commits=" ".join(sorted({str(r.get("git_commit")) for r in done})),
                             checkpoints=" ".join(str(r.get("checkpoint")) for r in done))
        for metric, ours in (("mIoU", "ours_mIoU"), ("multiply_adds", "ours_multiply_adds_tf")):
            paper = entry[f"paper_{metric}"]
            entry[f"diff_{metric}"] = None if entry[ours] is None or paper is None else entry[ours] - paper
        results.append(entry)
    _add_deltas(results)
    return results


def _add_deltas(results: list[dict]) -> None:
    """Each row's paired difference to its baseline row, in mIoU and in trimap mIoU at the narrowest band that
    every evaluation of the table measured."""
    by_name = {r["row"]: r for r in results}
    widths = [set(t) for r in results for t in r["trimap_per_seed"].values() if t]
    narrowest = min(set.intersection(*widths)) if widths and set.intersection(*widths) else None
    for r in results:
        base = by_name.get(r["baseline"])
        for key in ("delta_mIoU", "delta_mIoU_ci_low", "delta_mIoU_ci_high", "trimap_mIoU", "trimap_delta",
                    "trimap_delta_ci_low", "trimap_delta_ci_high"):
            r[key] = None
        r["delta_seeds"], r["trimap_width"] = 0, narrowest
        if base is None or base is r:
            r["baseline"] = "" if base is None else r["baseline"]
        else:
            d = paired_delta(r["per_seed"], base["per_seed"])
            r.update(delta_mIoU=d["delta"], delta_mIoU_ci_low=d["low"], delta_mIoU_ci_high=d["high"], delta_seeds=d["n"])
        if narrowest is None:
            continue
        at = {seed: t[narrowest] for seed, t in r["trimap_per_seed"].items() if narrowest in t}
        r["trimap_mIoU"] = statistics.fmean(at.values()) if at else None
        if base is not None and base is not r:
            d = paired_delta(at, {seed: t[narrowest] for seed, t in base["trimap_per_seed"].items() if narrowest in t})
            r.update(trimap_delta=d["delta"], trimap_delta_ci_low=d["low"], trimap_delta_ci_high=d["high"])


def format_delta(delta: float | None, low: float | None, high: float | None, n: int) -> str:
    """'+0.32 [−0.10, +0.74] (n=3)'; 'n/a' for the interval with one seed; '-' without a pair."""
    if delta is None:
        return "-"
    interval = "interval n/a" if low is None else f"95% CI [{low:+.2f}, {high:+.2f}]"
    return f"{delta:+.2f} ({interval}, n={n})"


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
          "| row | paper mIoU | ours mIoU | Δ | vs baseline (paired) | paper MAdds | ours MAdds (TF) | "
          "ours MAdds (plain) | Δ | note |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['row']} | {_fmt(r['paper_mIoU'], '%')} | {_miou(r)} | {_fmt(r['diff_mIoU'])} | "
                  f"{_versus(r)} | {_fmt(r['paper_multiply_adds'], 'B')} | {_fmt(r['ours_multiply_adds_tf'], 'B')} | "
                  f"{_fmt(r['ours_multiply_adds'], 'B')} | {_fmt(r['diff_multiply_adds'])} | {r['note']} |")
    md += ["", f"Ours: mean ± sample standard deviation over the seeds done (n). Multiply-Adds at {plan.canvas()} "
               "for the whole evaluation protocol; TF = counted as the paper's tfprof counted the official graph.",
           "vs baseline: the row's mIoU minus its baseline row's over the seeds both ran, mean and 95% interval of a "
           "paired t over seeds (n/a with one seed); an interval that holds 0 is a difference seeds alone can make."]
    md += _trimap_section(plan, results, stem)
    if plan.profile == "smoke":
        md += ["", f"Smoke profile: {' and '.join(plan.backbones())} from scratch on generated data for a few steps "
                   "— it checks the plumbing; its numbers are not comparable with the paper's."]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(plan, results, stem.with_suffix(".png"))
    return stem.with_suffix(".md")


def _versus(r: dict) -> str:
    if not r["baseline"]:
        return "-"
    if r["baseline"] == r["row"]:
        return "baseline"
    return f"{format_delta(r['delta_mIoU'], r['delta_mIoU_ci_low'], r['delta_mIoU_ci_high'], r['delta_seeds'])} vs {r['baseline']}"


def _trimap_section(plan: Plan, results: list[dict], stem: Path) -> list[str]:
    """Figure 5: each row's trimap mIoU at the narrowest band, its paired difference to its baseline beside the
    paper's, and `<stem>-trimap.png` with the rows' curves (mean ± std over seeds against band width)."""
    width = next((r["trimap_width"] for r in results if r["trimap_width"] is not None), None)
    if width is None:
        return []
    md = ["", f"## Trimap mIoU at the narrowest band ({width} px)", "",
          "| row | ours trimap mIoU | vs baseline (paired) | paper |", "|---|---|---|---|"]
    for r in results:
        if r["trimap_mIoU"] is None:
            continue
        versus = "baseline" if r["baseline"] == r["row"] else "-" if not r["baseline"] else (
            f"{format_delta(r['trimap_delta'], r['trimap_delta_ci_low'], r['trimap_delta_ci_high'], r['delta_seeds'])}"
            f" vs {r['baseline']}")
        paper = "-" if r["paper_trimap_delta"] is None else f"{r['paper_trimap_delta']:+.1f}"
        md.append(f"| {r['row']} | {r['trimap_mIoU']:.2f}% | {versus} | {paper} |")
    if any(r["paper_trimap_delta"] is not None for r in results):
        md += ["", "The paper prints only these two gains (§4.4); its Figure 5(a) curves carry no other numbers, "
                   "so our curves (trimap.png) have nothing to be compared with point by point."]
    curves, errors = {}, {}
    for r in results:
        per_width: dict[int, list[float]] = {}
        for t in r["trimap_per_seed"].values():
            for w, v in t.items():
                per_width.setdefault(w, []).append(v)
        if per_width:
            curves[r["row"]] = [(w, statistics.fmean(v)) for w, v in sorted(per_width.items())]
            errors[r["row"]] = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in sorted(per_width.items())]
    from lightning_modules.run.plots import plot_trimap

    path = plot_trimap(curves, trimap_plot(stem), f"{plan.table.title} ({plan.profile}): mean ± std over seeds",
                       errors)
    return md + ["", f"Curves: {path.name} (mean ± std over seeds against band width)."]


def trimap_plot(stem: Path) -> Path:
    return stem.with_name(f"{stem.name}-trimap.png")


def plot(plan: Plan, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, delta_ax) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [7, 5]})
    _plot_deltas(delta_ax, results)
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


def _plot_deltas(ax, results: list[dict]) -> None:
    """Each row's paired difference to its baseline with its 95% interval (a dot alone: one seed)."""
    rows = [r for r in results if r["delta_mIoU"] is not None]
    for y, r in enumerate(rows):
        low, high = r["delta_mIoU_ci_low"], r["delta_mIoU_ci_high"]
        xerr = None if low is None else [[r["delta_mIoU"] - low], [high - r["delta_mIoU"]]]
        ax.errorbar([r["delta_mIoU"]], [y], xerr=xerr, fmt="s", capsize=3, color="C1")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['row']} − {r['baseline']}" for r in rows], fontsize=6)
    ax.set_xlabel("mIoU difference to the baseline row (points, paired over seeds, 95% CI)")
    ax.set_title("paired differences", fontsize=9)
