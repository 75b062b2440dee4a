"""Figure 5 (trimap gain of the decoder) and paired deltas in every table's report, on made-up results rows."""
from __future__ import annotations

import csv
import json
import math

from scipy import stats

from ablations import report
from ablations.plan import Plan
from ablations.runner import main
from datamodules import synthetic
from experiments.paper import FIGURE5, TABLE1
from helpers import shrink_voc_images


def _write_eval(plan: Plan, row: str, seed: int, miou: float, trimap: dict[int, float] | None = None) -> None:
    job = next(j for j in plan.jobs() if j.kind == "eval" and j.row == row and j.seed == seed)
    metrics = {"val/mIoU": miou, **{f"val/trimap_mIoU/{w}": v for w, v in (trimap or {}).items()}}
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "results.json").write_text(json.dumps(
        {"validate": {"finished": True, "metrics": metrics, "git_commit": "abc", "checkpoint": f"{row}-{seed}"}}))


def test_figure5_dry_run_lists_the_rows_and_the_papers_gains(capsys):
    assert main(FIGURE5, ["--dry-run", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    for row in ("resnet101-no-decoder", "resnet101-decoder", "xception65-no-decoder", "xception65-decoder"):
        assert f"\n{row} " in out
    assert "resnet101-decoder − resnet101-no-decoder: +4.8 points" in out
    assert "xception65-decoder − xception65-no-decoder: +5.4 points" in out
    assert "8 trainings, 8 evaluations (2 seeds)" in out  # the two backbones never share a training


def test_a_tables_report_shows_paired_deltas_with_intervals_over_two_seeds(tmp_path):
    plan = Plan(TABLE1, "smoke", tmp_path, seeds=[0, 1])
    baseline = {0: 0.700, 1: 0.720}  # proj8, the table's first row
    other = {0: 0.710, 1: 0.735}     # proj16: +1.0 and +1.5 points
    for seed in (0, 1):
        _write_eval(plan, "proj8", seed, baseline[seed])
        _write_eval(plan, "proj16", seed, other[seed])
    _write_eval(plan, "proj32", 0, 0.69)  # one seed only: a mean difference, no interval
    results = report.aggregate(plan)
    rows = {r["row"]: r for r in results}
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.125) / math.sqrt(2)  # differences 1.0 and 1.5: sd √0.125, mean 1.25
    assert math.isclose(rows["proj16"]["delta_mIoU"], 1.25, abs_tol=1e-9)
    assert math.isclose(rows["proj16"]["delta_mIoU_ci_low"], 1.25 - half, abs_tol=1e-9)
    assert math.isclose(rows["proj16"]["delta_mIoU_ci_high"], 1.25 + half, abs_tol=1e-9)
    assert rows["proj32"]["delta_seeds"] == 1 and rows["proj32"]["delta_mIoU_ci_low"] is None
    assert math.isclose(rows["proj32"]["delta_mIoU"], -1.0, abs_tol=1e-9)
    assert rows["proj48"]["delta_mIoU"] is None

    md = report.write(plan, results).read_text()
    assert f"| proj16 | 77.92% | 72.25 ± 1.77% (n=2) | -5.67 | +1.25 (95% CI [{1.25 - half:+.2f}, {1.25 + half:+.2f}], n=2) vs proj8 |" in md
    assert "| proj8 | 77.61% |" in md and "| baseline |" in md
    assert "-1.00 (interval n/a, n=1) vs proj8" in md
    table = {r["row"]: r for r in csv.DictReader(open(plan.stem.with_suffix(".csv")))}
    assert float(table["proj16"]["delta_mIoU_ci_high"]) == rows["proj16"]["delta_mIoU_ci_high"]
    assert table["proj16"]["baseline"] == "proj8" and table["proj32"]["delta_mIoU_ci_low"] == ""
    assert plan.stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_figure5_report_puts_the_gain_at_the_narrowest_band_beside_the_papers(tmp_path):
    plan = Plan(FIGURE5, "smoke", tmp_path, seeds=[0, 1])
    for seed in (0, 1):
        for backbone, gain in (("resnet101", 0.04), ("xception65", 0.06)):
            low = {2: 0.50 + 0.01 * seed, 10: 0.60, 40: 0.70}
            _write_eval(plan, f"{backbone}-no-decoder", seed, 0.75, low)
            _write_eval(plan, f"{backbone}-decoder", seed, 0.76, {w: v + gain + 0.01 * seed for w, v in low.items()})
    results = report.aggregate(plan)
    md = report.write(plan, results).read_text()
    assert "## Trimap mIoU at the narrowest band (2 px)" in md
    # resnet101: gains 4 and 5 points → 4.50 ± t(0.975, 1)·0.5
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2)
    assert f"| resnet101-decoder | 55.00% | +4.50 (95% CI [{4.5 - half:+.2f}, {4.5 + half:+.2f}], n=2) vs resnet101-no-decoder | +4.8 |" in md
    assert "| xception65-decoder | 57.00% | +6.50" in md and "| +5.4 |" in md
    assert "carry no other numbers" in md
    assert report.trimap_plot(plan.stem).read_bytes()[:4] == b"\x89PNG"


def test_figure5_smoke_profile_trains_and_draws_the_curves(tmp_path, jobs_in_process, wandb_disabled, capsys):
    """Two rows (a backbone without and with the decoder), one seed, on a few generated images: the trainings and
    evaluations run in this process (the process boundary is not what is tested here)."""
    root = synthetic.generate(tmp_path / "voc", n_voc_train=4, n_voc_val=2, n_sbd_only=2, n_voc_test=0)
    shrink_voc_images(root, 6)  # 1/6 size: cheap validation
    canvas = tmp_path / "canvas.yaml"  # the smallest aligned canvas holding the small images, not 513×513
    canvas.write_text("model:\n  eval_canvas: null\n")
    out = tmp_path / "results"
    assert main(FIGURE5, ["--profile", "smoke", "--rows", "resnet101-no-decoder,resnet101-decoder",
                          "--data-root", str(root), "--out", str(out), "--config", str(canvas)]) == 0
    md = (out / "figure5_trimap-smoke+canvas.md").read_text()
    assert "## Trimap mIoU at the narrowest band (2 px)" in md
    assert "| resnet101-decoder | " in md and "(interval n/a, n=1) vs resnet101-no-decoder | +4.8 |" in md
    assert (out / "figure5_trimap-smoke+canvas-trimap.png").read_bytes()[:4] == b"\x89PNG"
    rows = {r["row"]: r for r in csv.DictReader(open(out / "figure5_trimap-smoke+canvas.csv"))}
    assert rows["resnet101-decoder"]["trimap_width"] == "2" and rows["resnet101-decoder"]["trimap_delta"]
    # each evaluation drew its own curve in its run folder
    assert len(list((out / "figure5_trimap" / "smoke+canvas").glob("eval-*/trimap_validate.png"))) == 2
