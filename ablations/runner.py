"""The one runner behind every ablation script: plan, train, evaluate, aggregate — idempotently.

A table is a list of `Row`s: overrides of the table's config for training, overrides of the evaluation
protocol, and the paper's numbers. Rows that share their training overrides share one training run
(Table 3: 4 trainings, 14 evaluations). Every training and evaluation is a W&B run in group = the
table, with job type `train` / `eval`; evaluation runs record which training run and checkpoint they
scored. A finished run leaves `done.json` in its directory and is never redone; an interrupted training
resumes from its last checkpoint (`--ckpt_path last`).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import compose, eval_protocol, net_kwargs, to_cli_args
from experiments.paper import Row, Table, evaluation, net, protocol_row  # noqa: F401 (the table vocabulary)
from experiments.wandb_offline import read_runs
from lightning_modules.components.complexity import MULTIPLY_ADDS, MULTIPLY_ADDS_TF, protocol_cost

REPO = Path(__file__).resolve().parent.parent
MIOU, MADDS = "val/mIoU", MULTIPLY_ADDS_TF  # the TF-graph count: comparable with the paper's

#: `--profile smoke`: the whole table on the generated data on a CPU in minutes (checks the plumbing,
#: not the numbers): MobileNetV2 from scratch, tiny crops, a few steps, a few val images.
SMOKE_OVERRIDES = {
    "model.net.init_args.backbone": "mobilenet_v2",
    "model.net.init_args.weights": None,
    "model.net.init_args.multi_grid": None,  # ResNet-only (Table 3 rows set it)
    "data.root": "data/voc-synthetic",
    "data.generate": True,
    "data.normalization": "imagenet",
    "data.crop_size": 97,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "trainer.max_steps": 20,
    "trainer.val_check_interval": 20,
    "model.lr": 0.02,
    "model.bn_momentum": None,  # TF's 0.9997 barely moves BN statistics in 20 steps
    "model.backbone_bn_momentum": None,
    "trainer.limit_val_batches": 3,
    "trainer.num_sanity_val_steps": 0,
    "trainer.precision": "bf16-mixed",
    "trainer.enable_progress_bar": False,
    "model.channels_last": True,
}


def training_key(row: Row) -> str:
    return hashlib.sha1(json.dumps(row.train, sort_keys=True).encode()).hexdigest()[:8]


def settings_tags(overrides: dict[str, Any]) -> list[str]:
    return [f"{k.rsplit('.', 1)[-1]}={json.dumps(v)}" for k, v in sorted(overrides.items())]


@dataclass
class Job:
    """One `experiments.train` invocation and where it leaves its results."""
    kind: str  # "train" or "eval"
    run_dir: Path
    args: list[str]

    @property
    def done(self) -> bool:
        return (self.run_dir / "done.json").exists()


def launch_local(jobs: list[Job]) -> None:
    """Run jobs one after another here. A cluster launcher replaces only this step."""
    for job in jobs:
        print(f"[{job.kind}] {job.run_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "experiments.train", *job.args], cwd=REPO, check=True)
        mark_done(job)


def mark_done(job: Job) -> None:
    runs = read_runs(job.run_dir)
    summary = {"run_id": runs[-1].run_id if runs else None}
    if job.kind == "eval" and runs:
        summary.update({k: values[-1][1] for k in (MIOU, MADDS) if (values := runs[-1].metric(k))})
    (job.run_dir / "done.json").write_text(json.dumps(summary, indent=1))


class Runner:
    def __init__(self, table: Table, profile: str, out: Path, data_root: str | None, project: str) -> None:
        self.table, self.profile, self.out, self.project = table, profile, out, project
        self.base_overrides = dict(SMOKE_OVERRIDES) if profile == "smoke" else {}
        if data_root:
            self.base_overrides["data.root"] = data_root
        self.work = out / table.name / profile

    def rows(self) -> list[Row]:
        return [r for r in self.table.rows if r.reproducible]

    def trainings(self) -> dict[str, Row]:
        unique: dict[str, Row] = {}
        for row in self.rows():
            unique.setdefault(training_key(row), row)
        return unique

    def _logger_args(self, run_dir: Path, name: str, job_type: str, tags: list[str], config: dict | None = None) -> dict:
        args = {"trainer.logger.init_args.save_dir": str(run_dir), "trainer.logger.init_args.name": name,
                "trainer.logger.init_args.group": self.table.name, "trainer.logger.init_args.job_type": job_type,
                "trainer.logger.init_args.project": self.project,
                "trainer.logger.init_args.tags": [self.table.name, self.profile, *tags]}
        if config:
            args["trainer.logger.init_args.config"] = config
        return args

    def train_job(self, key: str, row: Row) -> Job:
        run_dir = self.work / f"train-{key}"
        overrides = {**row.train, **self.base_overrides,
                     **self._logger_args(run_dir, f"{self.table.name}/train-{key}", "train", settings_tags(row.train))}
        return Job("train", run_dir, ["fit", "--config", self.table.config, *to_cli_args(overrides), "--ckpt_path", "last"])

    def eval_job(self, row: Row) -> Job:
        key = training_key(row)
        train_dir = self.work / f"train-{key}"
        checkpoint = next(train_dir.rglob("last.ckpt"), train_dir / "checkpoints" / "last.ckpt")
        train_run = json.loads((train_dir / "done.json").read_text())["run_id"] if (train_dir / "done.json").exists() else None
        run_dir = self.work / f"eval-{row.name}"
        tags = settings_tags({**row.train, **row.eval})
        provenance = {"evaluated_run": train_run, "checkpoint": str(checkpoint), "paper_mIoU": row.paper_miou,
                      "paper_multiply_adds": row.paper_multiply_adds, "row": row.name}
        overrides = {**row.train, **row.eval, **self.base_overrides,
                     **self._logger_args(run_dir, f"{self.table.name}/{row.name}", "eval", tags, provenance)}
        return Job("eval", run_dir, ["validate", "--config", self.table.config, *to_cli_args(overrides),
                                     "--ckpt_path", str(checkpoint)])

    # -- the three phases ------------------------------------------------------------------------------
    def plan(self) -> str:
        """Every row with its evaluation protocol and Multiply-Adds — TF-graph count (comparable with the
        paper's) and plain count (what this code executes) — and the runs it takes."""
        lines = [f"{self.table.title} — profile {self.profile}", "",
                 f"{'row':<38} {'training':<10} {'eval':<16} {'paper MAdds':>11} {'ours TF':>10} {'ours plain':>10} "
                 f"{'paper mIoU':>10}"]
        for row in self.table.rows:
            config = compose([REPO / self.table.config], {**row.train, **row.eval, **self.base_overrides})
            protocol = eval_protocol(config)
            cost = protocol_cost(net_kwargs(config), protocol)
            paper = f"{row.paper_multiply_adds:.2f}B" if row.paper_multiply_adds else "-"
            miou = f"{row.paper_miou:.2f}%" if row.paper_miou else "-"
            train = training_key(row) if row.reproducible else "skipped"
            lines.append(f"{row.name:<38} {train:<10} {protocol.describe():<16} {paper:>11} "
                         f"{cost[MULTIPLY_ADDS_TF]:>9.2f}B {cost[MULTIPLY_ADDS]:>9.2f}B {miou:>10}")
            if not row.reproducible:
                lines.append(f"{'':<38} ↳ not reproducible here: {row.note}")
        lines += ["", "Multiply-Adds at 513×513 for the whole evaluation protocol. TF: counted as tfprof counts the "
                      "official TF graph (atrous convs on their space-to-batch padding), the paper's convention; "
                      "plain: what this code executes.",
                  f"{len(self.trainings())} trainings, {len(self.rows())} evaluations"]
        return "\n".join(lines)

    def jobs(self) -> list[Job]:
        return [self.train_job(k, r) for k, r in self.trainings().items()]

    def run(self, launcher: str = "local") -> None:
        train_jobs = self.jobs()
        for job in train_jobs:
            if job.done:
                print(f"[train] {job.run_dir} finished earlier, skipped", flush=True)
        launch([j for j in train_jobs if not j.done], launcher, self.work / "slurm")
        eval_jobs = [self.eval_job(r) for r in self.rows()]
        launch([j for j in eval_jobs if not j.done], launcher, self.work / "slurm")

    def aggregate(self) -> list[dict]:
        results = []
        for row in self.table.rows:
            entry = {"row": row.name, "paper_mIoU": row.paper_miou, "paper_multiply_adds": row.paper_multiply_adds,
                     "ours_mIoU": None, "ours_multiply_adds": None, "note": row.note}
            done = self.work / f"eval-{row.name}" / "done.json"
            if row.reproducible and done.exists():
                summary = json.loads(done.read_text())
                entry["ours_mIoU"] = None if summary.get(MIOU) is None else 100 * summary[MIOU]
                entry["ours_multiply_adds"] = summary.get(MADDS)
                entry["run_id"] = summary.get("run_id")
            for metric in ("mIoU", "multiply_adds"):
                ours, paper = entry[f"ours_{metric}"], entry[f"paper_{metric}"]
                entry[f"diff_{metric}"] = None if ours is None or paper is None else ours - paper
            results.append(entry)
        write_results(self.table, self.profile, results, self.out)
        return results


def launch(jobs: list[Job], launcher: str, slurm_dir: Path) -> None:
    if not jobs:
        return
    if launcher == "local":
        launch_local(jobs)
    elif launcher == "slurm":
        from ablations.slurm import launch_slurm
        launch_slurm(jobs, slurm_dir)
    else:
        raise ValueError(f"--launcher must be 'local' or 'slurm', got {launcher!r}")


def _fmt(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def write_results(table: Table, profile: str, results: list[dict], out: Path) -> None:
    """results/<table>.md and .csv (ours beside the paper), and a PNG of mIoU against Multiply-Adds."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / table.name if profile == "paper" else out / f"{table.name}-{profile}"
    columns = ["row", "paper_mIoU", "ours_mIoU", "diff_mIoU", "paper_multiply_adds", "ours_multiply_adds",
               "diff_multiply_adds", "note"]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    md = [f"# {table.title} (profile: {profile})", "",
          "| row | paper mIoU | ours mIoU | Δ | paper MAdds | ours MAdds | Δ | note |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['row']} | {_fmt(r['paper_mIoU'], '%')} | {_fmt(r['ours_mIoU'], '%')} | {_fmt(r['diff_mIoU'])} | "
                  f"{_fmt(r['paper_multiply_adds'], 'B')} | {_fmt(r['ours_multiply_adds'], 'B')} | "
                  f"{_fmt(r['diff_multiply_adds'])} | {r['note']} |")
    if profile == "smoke":
        md += ["", "Smoke profile: MobileNetV2 from scratch on generated data for a few steps — it checks the "
                   "plumbing; its numbers are not comparable with the paper's."]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(table, profile, results, stem.with_suffix(".png"))


def plot(table: Table, profile: str, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for source, marker in (("paper", "o"), ("ours", "s")):
        # Tables 1 and 2 print no Multiply-Adds: their paper points sit at our count for the same row
        points = [(r[f"{source}_multiply_adds"] or r["ours_multiply_adds"], r[f"{source}_mIoU"], r["row"])
                  for r in results if r[f"{source}_mIoU"] is not None
                  and (r[f"{source}_multiply_adds"] or r["ours_multiply_adds"]) is not None]
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=source)
            for x, y, name in points:
                ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("Multiply-Adds (billions, 513×513, evaluation protocol)")
    ax.set_ylabel("VOC 2012 val mIoU (%)")
    ax.set_title(f"{table.title} ({profile})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_summary_to_wandb(runner: Runner, results: list[dict]) -> None:
    """The table and its plot as one more run in the table's group (job type `summary`)."""
    import wandb

    from lightning_modules.wandb_logger import wandb_offline

    stem = runner.out / (runner.table.name if runner.profile == "paper" else f"{runner.table.name}-{runner.profile}")
    run = wandb.init(project=runner.project, group=runner.table.name, job_type="summary",
                     name=f"{runner.table.name}/summary", dir=str(runner.work), mode="offline" if wandb_offline() else "online",
                     tags=[runner.table.name, runner.profile])
    columns = list(results[0].keys())
    run.log({"results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in results]),
             "miou_vs_multiply_adds": wandb.Image(str(stem.with_suffix(".png")))})
    run.finish()


def main(table: Table, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Reproduce {table.title}")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (rows, Multiply-Adds, runs) and exit")
    parser.add_argument("--profile", choices=("paper", "smoke"), default="paper",
                        help="paper: the paper's protocol on VOC + SBD (GPUs); smoke: generated data on a CPU")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run (default: all)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: the config's data.root)")
    parser.add_argument("--out", default="results", help="results directory")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "deeplabv3plus"))
    args = parser.parse_args(argv)
    if args.rows:
        wanted = set(args.rows.split(","))
        unknown = wanted - {r.name for r in table.rows}
        if unknown:
            parser.error(f"--rows: unknown rows {sorted(unknown)}; the table has {[r.name for r in table.rows]}")
        table = Table(table.name, table.title, table.config, [r for r in table.rows if r.name in wanted])
    runner = Runner(table, args.profile, Path(args.out), args.data_root, args.project)
    if args.dry_run:
        print(runner.plan())
        return 0
    runner.run(args.launcher)
    results = runner.aggregate()
    log_summary_to_wandb(runner, results)
    print((runner.out / (table.name if args.profile == "paper" else f"{table.name}-{args.profile}")).with_suffix(".md").read_text())
    return 0

