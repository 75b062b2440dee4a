"""Planning a table: the trainings and evaluations its rows need, per seed, and where each leaves its results.

Rows that share their training overrides share one training per seed (Table 3: 4 trainings, 14
evaluations). Every job is one `experiments.train` run in its own directory; the run's `results.json`
(`lightning_modules/run/record.py`) says whether it finished — nothing here reads W&B.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.cli.overrides import to_cli_args
from experiments.paper import Row, Table

REPO = Path(__file__).resolve().parent.parent
#: `--profile smoke`: the table's config shrunk by the small-run overlay — MobileNetV2 (Table 3: ResNet-50,
#: `Table.smoke`) from scratch on the generated data, a few steps (checks the plumbing, not the numbers)
SMOKE_CONFIGS = ("experiments/configs/quickstart.yaml", "experiments/configs/smoke.yaml")


def training_key(row: Row) -> str:
    """Rows with the same training overrides (and the same own config, where a row has one) share a training."""
    trained = {"config": row.config, **row.train} if row.config else row.train
    return hashlib.sha1(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:8]


def settings_tags(overrides: dict[str, Any]) -> list[str]:
    return [f"{k.rsplit('.', 1)[-1]}={json.dumps(v)}" for k, v in sorted(overrides.items())]


@dataclass
class Job:
    """One `experiments.train` run: `subcommand --config ... overrides --ckpt_path ...`."""

    kind: str  # "train" or "eval"
    name: str  # "train-<key>-seed<s>" or "eval-<row>-seed<s>"
    run_dir: Path
    configs: list[str]
    overrides: list[str]
    ckpt_path: str | None
    row: str | None = None
    seed: int = 0
    depends_on: "Job | None" = None
    processes: int = 1
    gpus: int = 1

    @property
    def stage(self) -> str:
        return "fit" if self.kind == "train" else "validate"

    @property
    def args(self) -> list[str]:
        configs = [arg for config in self.configs for arg in ("--config", config)]
        ckpt = ["--ckpt_path", self.ckpt_path] if self.ckpt_path else []
        return [self.stage, *configs, *self.overrides, *ckpt]

    def results(self) -> dict:
        from lightning_modules.run.record import read_results  # imports Lightning: not for a dry run

        return read_results(self.run_dir).get(self.stage, {})

    @property
    def done(self) -> bool:
        return bool(self.results().get("finished"))


@dataclass
class Plan:
    table: Table
    profile: str = "paper"  # "paper" or "smoke"
    out: Path = Path("results")
    data_root: str | None = None
    project: str = "deeplabv3plus"
    seeds: list[int] = field(default_factory=lambda: [0])
    processes_per_row: int = 1
    gpus_per_row: int = 1
    #: configs layered after the table's own (`--config`): e.g. Table 3 on the official ResNet-101 beta
    extra_configs: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str:
        """The profile, plus the extra configs' names: runs of another variant never share a directory."""
        return "+".join([self.profile, *(Path(c).stem for c in self.extra_configs)])

    @property
    def work(self) -> Path:
        return self.out / self.table.name / self.variant

    @property
    def stem(self) -> Path:
        """Where the table's results go: results/<table>[-<variant>].{md,csv,png}."""
        return self.out / (self.table.name if self.variant == "paper" else f"{self.table.name}-{self.variant}")

    def configs(self, row: Row) -> list[str]:
        """The row's config (the table's unless the row names its own), the extra ones, the smoke overlay."""
        return [self.table.config_of(row), *self.extra_configs, *(SMOKE_CONFIGS if self.profile == "smoke" else ())]

    @property
    def profile_overrides(self) -> dict[str, Any]:
        """The table's own smoke overrides (`Table.smoke`) under `--profile smoke`; none otherwise."""
        return dict(self.table.smoke) if self.profile == "smoke" else {}

    def canvas(self) -> str:
        """The evaluation canvas the Multiply-Adds are counted at: "513×513" (VOC), "1025×2049" (Cityscapes);
        runs that score each image on its own aligned canvas are counted on the paper's 513×513."""
        from experiments.cli.parse_only import eval_protocol
        from lightning_modules.components.protocol import PAPER_CROP

        canvas = eval_protocol(self.resolved(self.table.rows[0])).canvas
        if canvas is None:
            return f"{PAPER_CROP}×{PAPER_CROP} (the runs score each image on its own aligned canvas)"
        return "×".join(map(str, canvas))

    def backbones(self) -> list[str]:
        """The backbones the table's trainings use under this profile, as configured (`mobilenet_v2`, ...)."""
        from experiments.cli.parse_only import net_kwargs

        return sorted({net_kwargs(self.resolved(row))["backbone"] for row in self.trainings().values()})

    def rows(self) -> list[Row]:
        return [r for r in self.table.rows if r.reproducible]

    def trainings(self) -> dict[str, Row]:
        unique: dict[str, Row] = {}
        for row in self.rows():
            unique.setdefault(training_key(row), row)
        return unique

    def _common(self, run_dir: Path, name: str, job_type: str, tags: list[str], seed: int,
                config: dict | None = None) -> dict[str, Any]:
        overrides: dict[str, Any] = {**self.profile_overrides, "seed_everything": seed, "data.seed": seed}
        if self.data_root:
            overrides["data.root"] = self.data_root
        if self.processes_per_row > 1 and job_type == "train":
            overrides.update({"trainer.devices": self.processes_per_row, "trainer.strategy": "ddp"})
        if self.gpus_per_row == 0:
            overrides["trainer.accelerator"] = "cpu"
        overrides.update({
            "trainer.logger.init_args.save_dir": str(run_dir), "trainer.logger.init_args.name": name,
            "trainer.logger.init_args.group": self.table.name, "trainer.logger.init_args.job_type": job_type,
            "trainer.logger.init_args.project": self.project,
            "trainer.logger.init_args.tags": [self.table.name, self.variant, f"seed={seed}", *tags]})
        if config:
            overrides["trainer.logger.init_args.config"] = config
        return overrides

    def train_job(self, key: str, row: Row, seed: int) -> Job:
        name = f"train-{key}-seed{seed}"
        run_dir = self.work / name
        overrides = {**row.train, **self._common(run_dir, f"{self.table.name}/{name}", "train",
                                                 settings_tags(row.train), seed)}
        return Job("train", name, run_dir, self.configs(row), to_cli_args(overrides), "last", seed=seed,
                   processes=self.processes_per_row, gpus=self.gpus_per_row)

    def eval_job(self, row: Row, seed: int, training: Job) -> Job:
        """Scores the training's newest checkpoint (`--ckpt_path <training run dir>`, resolved when it runs)."""
        name = f"eval-{row.name}-seed{seed}"
        run_dir = self.work / name
        provenance = {"row": row.name, "evaluated_run_dir": str(training.run_dir), "paper_mIoU": row.paper_miou,
                      "paper_multiply_adds": row.paper_multiply_adds}
        overrides = {**row.train, **row.eval,
                     **self._common(run_dir, f"{self.table.name}/{row.name}/seed{seed}", "eval",
                                    settings_tags({**row.train, **row.eval}), seed, provenance)}
        return Job("eval", name, run_dir, self.configs(row), to_cli_args(overrides), str(training.run_dir), row=row.name,
                   seed=seed, depends_on=training, gpus=min(self.gpus_per_row, 1))

    def jobs(self) -> list[Job]:
        """Trainings first, then evaluations (each knows the training it scores)."""
        trainings = {(key, seed): self.train_job(key, row, seed) for key, row in self.trainings().items()
                     for seed in self.seeds}
        evaluations = [self.eval_job(row, seed, trainings[training_key(row), seed])
                       for row in self.rows() for seed in self.seeds]
        return [*trainings.values(), *evaluations]

    def resolved(self, row: Row):
        """The row's evaluation config as `experiments.train` parses it (nothing instantiated)."""
        from experiments.cli.parse_only import config_reader  # imports Lightning: only for costs and the dry run

        return config_reader().parse([REPO / c for c in self.configs(row)],
                                     to_cli_args({**self.profile_overrides, **row.train, **row.eval}))

    def check(self) -> None:
        """Every training's network options as `experiments.train` checks them (`check_network_options`),
        before any run starts: a ConfigError naming the row, its configs and the option."""
        from experiments.cli.checks import check_network_options
        from experiments.cli.errors import ConfigError
        from experiments.cli.parse_only import net_kwargs

        for row in self.trainings().values():
            try:
                check_network_options(net_kwargs(self.resolved(row)))
            except ConfigError as e:
                raise ConfigError(f"row {row.name} ({' + '.join(self.configs(row))})", str(e)) from None

    def cost(self, row: Row, config=None) -> dict[str, float]:
        """Multiply-Adds (TF-graph and plain) and parameters of a row's evaluation protocol."""
        from experiments.cli.parse_only import eval_protocol, net_kwargs
        from lightning_modules.components.complexity import protocol_cost

        config = config or self.resolved(row)
        return protocol_cost(net_kwargs(config), eval_protocol(config))

    def describe(self) -> str:
        """The dry run: every row with its evaluation protocol and Multiply-Adds — TF-graph count (comparable
        with the paper's) and plain count (what this code executes) — and the runs it takes."""
        from experiments.cli.parse_only import eval_protocol
        from lightning_modules.components.complexity import MULTIPLY_ADDS, MULTIPLY_ADDS_TF

        lines = [f"{self.table.title} — profile {self.profile}, seeds {','.join(map(str, self.seeds))}", "",
                 f"{'row':<38} {'training':<10} {'eval':<16} {'paper MAdds':>11} {'ours TF':>10} {'ours plain':>10} "
                 f"{'paper mIoU':>10}"]
        for row in self.table.rows:
            config = self.resolved(row)
            cost = self.cost(row, config)
            paper = f"{row.paper_multiply_adds:.2f}B" if row.paper_multiply_adds else "-"
            miou = f"{row.paper_miou:.2f}%" if row.paper_miou else "-"
            train = training_key(row) if row.reproducible else "skipped"
            lines.append(f"{row.name:<38} {train:<10} {eval_protocol(config).describe():<16} {paper:>11} "
                         f"{cost[MULTIPLY_ADDS_TF]:>9.2f}B {cost[MULTIPLY_ADDS]:>9.2f}B {miou:>10}")
            if not row.reproducible:
                lines.append(f"{'':<38} ↳ not reproducible here: {row.note}")
        gains = [row for row in self.table.rows if row.paper_trimap_gain is not None]
        if gains:
            lines += ["", "Paper (§4.4): trimap mIoU gain at the narrowest band, the figure's only printed numbers:"]
            lines += [f"  {row.name} − {self.table.baseline_of(row)}: {row.paper_trimap_gain:+.1f} points"
                      for row in gains]
        n = len(self.seeds)
        lines += ["", f"Multiply-Adds at {self.canvas()} for the whole evaluation protocol. TF: counted as tfprof "
                      "counts the official TF graph (atrous convs on their space-to-batch padding), the paper's convention; "
                      "plain: what this code executes.",
                  f"{len(self.trainings()) * n} trainings, {len(self.rows()) * n} evaluations"
                  + (f" ({n} seeds)" if n > 1 else "")]
        return "\n".join(lines)
