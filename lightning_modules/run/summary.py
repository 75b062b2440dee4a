"""What a run reached, read back from its folder alone (`metrics.jsonl`, `results.json`; no W&B, no network):
the numbers of the end-of-stage console table (`run.report.RunReport`) and of `experiments.summary`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import CheckpointError, read_step
from .record import METRICS_FILE, read_records, read_results

#: how many of the best and of the worst classes the table lists
CLASS_ROWS = 5
#: config keys that differ between any two runs without describing the experiment (where files go)
NOT_SETTINGS = ("trainer.logger.init_args.save_dir", "trainer.logger.init_args.name", "trainer.default_root_dir",
                "ckpt_path", "config")


@dataclass
class StageSummary:
    """One stage (`fit`, `validate` or `test`) of one run."""

    run_dir: Path
    stage: str
    step: int | None
    finished: bool
    metrics: dict[str, float]
    config: dict
    best_checkpoint: str | None = None
    best_step: int | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Evaluation metrics of `fit` and `validate` are `val/…`, of `test` `test/…`."""
        return "test" if self.stage == "test" else "val"

    @property
    def class_iou(self) -> dict[str, float]:
        head = f"{self.prefix}/iou/"
        return {key[len(head):]: value for key, value in self.metrics.items() if key.startswith(head)}

    def rows(self) -> dict[str, str]:
        """The table's rows for this stage, label → formatted value ("" where the run has no value)."""
        m, p = self.metrics, self.prefix
        checkpoint = ""
        if self.best_checkpoint:
            checkpoint = Path(self.best_checkpoint).name + (f" (step {self.best_step})" if self.best_step is not None else "")
        return {
            "stage": self.stage + ("" if self.finished else " (unfinished)"),
            "step": "" if self.step is None else str(self.step),
            f"{p}/mIoU": _number(m.get(f"{p}/mIoU")),
            f"{p}/pixel_accuracy": _number(m.get(f"{p}/pixel_accuracy")),
            f"best {p}/mIoU": _number(max((v for _, v in self.curves.get(f"{p}/mIoU", [])), default=None)),
            "best checkpoint": checkpoint,
            "train images/s": _number(m.get("speed/train_images_per_s"), 1),
            "eval images/s": _number(m.get("speed/eval_images_per_s"), 1),
        }


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def read_curves(run_dir: str | Path, stage: str = "fit") -> dict[str, list[tuple[int, float]]]:
    """metric → [(step, value)] of a stage's logging points, in step order. A resumed run's record was
    rewound to its checkpoint when it resumed, so its parts already join into one curve; a step logged
    twice keeps its last value."""
    curves: dict[str, dict[int, float]] = {}
    for record in read_records(Path(run_dir) / METRICS_FILE):
        if record.get("stage") != stage or record.get("step") is None:
            continue
        for key, value in record["metrics"].items():
            curves.setdefault(key, {})[record["step"]] = value
    return {key: sorted(points.items()) for key, points in curves.items()}


def read_stage(run_dir: str | Path, stage: str | None = None) -> StageSummary:
    """A run's `stage`, or its last recorded one (test, then validate, then fit); ValueError naming the folder
    if it has no results."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if not results:
        raise ValueError(f"{run_dir}: no {run_dir / 'results.json'}; expected a run folder (trainer.logger "
                         "save_dir) of a run that has started a stage")
    if stage is None:
        stage = next(s for s in ("test", "validate", "fit", *results) if s in results)
    if stage not in results:
        raise ValueError(f"{run_dir}: no {stage!r} stage in results.json; it holds {sorted(results)}")
    entry = results[stage]
    best, best_step = entry.get("best_checkpoint"), None
    if best:
        try:
            best_step = read_step(best)
        except CheckpointError:  # moved or deleted since: the table still names it
            pass
    return StageSummary(run_dir=run_dir, stage=stage, step=entry.get("step"), finished=bool(entry.get("finished")),
                        metrics=entry.get("metrics", {}), config=entry.get("config", {}), best_checkpoint=best,
                        best_step=best_step, curves=read_curves(run_dir, "fit"))


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"lr": 0.1}} → {"model.lr": 0.1} (lists stay values)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def differing_settings(configs: list[dict]) -> list[str]:
    """The config keys whose values are not the same in every run (as a W&B group shows them), sorted."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if not k.startswith(NOT_SETTINGS) and len({repr(f.get(k)) for f in flat}) > 1]


def run_labels(summaries: list[StageSummary]) -> list[str]:
    """A legend label per run: the settings that differ between them (`model.lr=0.02, data.seed=1`), or the
    run folder's name when none does."""
    keys = differing_settings([s.config for s in summaries])
    labels = []
    for s in summaries:
        flat = flatten(s.config)
        labels.append(", ".join(f"{k.removeprefix('model.').removeprefix('net.init_args.')}={flat.get(k)}"
                                for k in keys) or str(s.run_dir))
    if len(set(labels)) < len(labels):  # the same settings twice (a repeated run): the folder tells them apart
        labels = [f"{label} ({s.run_dir})" for label, s in zip(labels, summaries)]
    return labels


def class_rows(summaries: list[StageSummary]) -> list[str]:
    """Classes the table lists: each run's best and worst `CLASS_ROWS`, ordered by their mean IoU."""
    chosen: set[str] = set()
    for s in summaries:
        ranked = sorted(s.class_iou, key=s.class_iou.get, reverse=True)
        chosen |= set(ranked[:CLASS_ROWS]) | set(ranked[-CLASS_ROWS:])

    def mean_iou(name: str) -> float:
        values = [s.class_iou[name] for s in summaries if name in s.class_iou]
        return sum(values) / len(values)

    return sorted(chosen, key=mean_iou, reverse=True)


def format_table(summaries: list[StageSummary], labels: list[str] | None = None) -> str:
    """Runs side by side, one column each: stage, step, mIoU, pixel accuracy, best checkpoint, images/s,
    then the IoU of the best and worst classes."""
    labels = labels or [str(s.run_dir) for s in summaries]
    columns = [s.rows() for s in summaries]
    names = list(dict.fromkeys(k for c in columns for k in c))
    lines = [["", *labels]] + [[name, *(c.get(name, "") for c in columns)] for name in names]
    prefix = summaries[0].prefix if summaries else "val"
    for name in class_rows(summaries):
        lines.append([f"{prefix}/iou/{name}", *(_number(s.class_iou.get(name)) for s in summaries)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])
