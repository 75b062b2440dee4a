"""The one command line behind every ablation script: plan (`ablations/plan.py`), launch here or on SLURM
(`ablations/launch.py`), report (`ablations/report.py`).

    python -m ablations.table3_output_stride --dry_run
    python -m ablations.table3_output_stride --launcher slurm --partition gpu --gpus_per_row 4 --seeds 0,1,2
    python -m ablations.table3_output_stride --status

Rerunning is always safe: finished runs are skipped, interrupted trainings resume from their newest
checkpoint, and on SLURM pending or running jobs are left alone.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path

from experiments.paper import Table
from experiments.cli.flags import add_flag

from . import report
from .launch import Cluster, LaunchError, run_local, status, submit_slurm
from .plan import Plan


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds such as 0,1,2, got {text!r}")
    return seeds


def parser_for(table: Table) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=f"Reproduce {table.title}", prog=f"python -m ablations.{table.name}")
    what = parser.add_mutually_exclusive_group()
    add_flag(what, "--dry_run", "--dry-run", action="store_true",
             help="print the plan (rows, Multiply-Adds, runs) and exit")
    what.add_argument("--status", action="store_true", help="each run's state, SLURM job id and log; the table so far")
    what.add_argument("--report", action="store_true", help="only write the table from the runs that are done")
    parser.add_argument("--profile", choices=("paper", "smoke"), default="paper",
                        help="paper: the paper's protocol on VOC + SBD (GPUs); smoke: generated data on a CPU")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: run here, one after another; slurm: submit every run and return")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds, one training each (default 0)")
    add_flag(parser, "--data.root", "--data-root", dest="data_root", default=None,
             help="dataset root (default: the config's data.root)")
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help=f"a config layered after the table's own ({table.config}); repeatable, e.g. "
                             "experiments/configs/resnet101_beta_os16.yaml for Table 3 on the paper's ResNet-101 beta")
    add_flag(parser, "--output", "--out", default="results", help="results directory")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "deeplabv3plus"))
    slurm = parser.add_argument_group("SLURM (with --launcher slurm)")
    add_flag(slurm, "--cluster_config", "--cluster-config", default=None,
             help="YAML file with any of the options below")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--time", help="per run, e.g. 24:00:00 (default)")
    slurm.add_argument("--constraint")
    add_flag(slurm, "--gpus_per_row", "--gpus-per-row", type=int,
             help="GPUs (= DDP processes) per training, global batch unchanged")
    add_flag(slurm, "--processes_per_row", "--processes-per-row", type=int,
             help="DDP processes per training (default: one per GPU)")
    add_flag(slurm, "--cpus_per_gpu", "--cpus-per-gpu", type=int, help="CPU cores per process (default 8)")
    return parser


def _same_plan_args(args: argparse.Namespace) -> list[str]:
    """The options that select the same runs (for `--status`/`--report` of this invocation)."""
    same = ["--profile", args.profile, "--output", str(Path(args.output).resolve()),
            "--seeds", ",".join(map(str, args.seeds)), "--project", args.project]
    for option, value in (("--rows", args.rows), ("--data.root", args.data_root)):
        if value:
            same += [option, value]
    for config in args.config:
        same += ["--config", config]
    return same


def main(table: Table, argv: list[str] | None = None) -> int:
    parser = parser_for(table)
    args = parser.parse_args(argv)
    if args.rows:
        wanted = args.rows.split(",")
        unknown = set(wanted) - {r.name for r in table.rows}
        if unknown:
            parser.error(f"--rows: unknown rows {sorted(unknown)}; the table has {[r.name for r in table.rows]}")
        table = replace(table, rows=[r for r in table.rows if r.name in wanted])
    settings = Cluster.from_yaml(args.cluster_config) if args.cluster_config else {}
    settings.update({f.name: getattr(args, f.name) for f in fields(Cluster) if getattr(args, f.name) is not None})
    cluster = Cluster(**settings)
    if cluster.gpus_per_row < 0 or cluster.processes < 1:
        parser.error("--gpus_per_row must be ≥ 0 and --processes_per_row ≥ 1")
    for config in args.config:
        if not Path(config).is_file():
            parser.error(f"--config {config}: no such file")
    plan = Plan(table, args.profile, Path(args.output).resolve(), args.data_root, args.project, args.seeds,
                cluster.processes, cluster.gpus_per_row, args.config)
    from experiments.cli.errors import ConfigError  # imports Lightning: not for --help

    try:
        plan.check()
    except ConfigError as e:
        parser.error(str(e))
    if args.dry_run:
        print(plan.describe())
        return 0
    if args.status:
        for job in plan.jobs():
            state, job_id, log = status(job)
            print(f"{job.name:<44} {state:<14} {job_id or '-':<10} {log or job.run_dir}")
    elif not args.report:
        try:
            if args.launcher == "slurm":
                same = _same_plan_args(args)
                submitted = submit_slurm(plan.jobs(), cluster, table.name,
                                         [sys.executable, "-m", f"ablations.{table.name}", "--report", *same], plan.work)
                print(f"submitted {len(submitted)} SLURM jobs; nothing waits here. Progress: "
                      f"python -m ablations.{table.name} --status {shlex.join(same)}")
                return 0
            run_local(plan.jobs())
        except LaunchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    results = report.aggregate(plan)
    md = report.write(plan, results)
    if not args.status:
        from .wandb_summary import log_table_summary

        log_table_summary(plan, results, md)
    print(md.read_text())
    return 0
