"""One flag style across the command-line tools (the training CLI's underscores, `--output`, `--data.root`),
with each earlier spelling still accepted. Parse only: the tool's own parser runs, the tool does not."""
from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable

import pytest

from ablations import table3_output_stride
from ablations.runner import main as ablation_main
from datamodules import synthetic, voc
from experiments import complexity, import_official
from experiments.measure import benchmark, device_check


class Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


@pytest.fixture
def parse(monkeypatch) -> Callable[[Callable[[list[str]], object], list[str]], argparse.Namespace]:
    """Run a tool's `main(argv)` up to its parse (`parse_args` calls `parse_known_args`), and return what it
    parsed; an argument no option takes fails the test."""
    original = argparse.ArgumentParser.parse_known_args

    def stop_after_parsing(self, args=None, namespace=None):
        namespace, extra = original(self, args, namespace)
        assert not extra, f"not accepted: {extra}"
        raise Parsed(namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop_after_parsing)

    def run(main, argv: list[str]) -> argparse.Namespace:
        with pytest.raises(Parsed) as parsed:
            main(argv)
        return parsed.value.namespace

    return run


def ablations(argv: list[str]) -> int:
    return ablation_main(table3_output_stride.TABLE, argv)


# (tool, arguments, the new spelling of one flag, its old spelling, the parsed attribute, the expected value)
RENAMES = [
    (ablations, [], "--dry_run", "--dry-run", "dry_run", True),
    (ablations, [], "--data.root=/d", "--data-root=/d", "data_root", "/d"),
    (ablations, [], "--output=/r", "--out=/r", "output", "/r"),
    (ablations, [], "--cluster_config=c.yaml", "--cluster-config=c.yaml", "cluster_config", "c.yaml"),
    (ablations, [], "--gpus_per_row=2", "--gpus-per-row=2", "gpus_per_row", 2),
    (ablations, [], "--processes_per_row=2", "--processes-per-row=2", "processes_per_row", 2),
    (ablations, [], "--cpus_per_gpu=3", "--cpus-per-gpu=3", "cpus_per_gpu", 3),
    (benchmark.main, ["--config=c.yaml"], "--eval_images=3", "--eval-images=3", "eval_images", 3),
    (benchmark.main, ["--config=c.yaml"], "--no_ms_flip", "--no-ms-flip", "no_ms_flip", True),
    (benchmark.main, ["--config=c.yaml"], "--peak_tflops=9", "--peak-tflops=9", "peak_tflops", 9.0),
    (device_check.main, [], "--output=/o", "--out=/o", "output", "/o"),
    (device_check.main, ["--output=/o"], "--data.root=/d", "--data-root=/d", "data_root", "/d"),
    (complexity.main, [], "--paper_tables", "--paper-tables", "paper_tables", True),
    (import_official.main, ["src", "--output=o.ckpt"], "--train_output_stride=8", "--output_stride=8",
     "train_output_stride", 8),
    (synthetic.main, [], "--output=/o", "--out=/o", "output", "/o"),
    (voc.main, ["--check=/v"], "--sbd_root=/s", "--sbd-root=/s", "sbd_root", "/s"),
]


@pytest.mark.parametrize("main, base, new, old, attribute, value", RENAMES, ids=[r[2].split("=")[0] for r in RENAMES])
def test_new_and_old_spellings_parse_the_same(parse, main, base, new, old, attribute, value):
    assert getattr(parse(main, [*base, new]), attribute) == value
    assert getattr(parse(main, [*base, old]), attribute) == value


@pytest.mark.parametrize("main, base", [(ablations, []), (benchmark.main, []), (device_check.main, []),
                                        (import_official.main, []), (synthetic.main, []), (voc.main, [])])
def test_help_shows_only_the_new_spellings(main, base):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*base, "--help"])
    text = out.getvalue()
    olds = {old.split("=")[0] for m, _, _, old, _, _ in RENAMES if m is main}
    news = {new.split("=")[0] for m, _, new, _, _, _ in RENAMES if m is main}
    assert olds and not {o for o in olds if f"{o} " in text or f"{o}\n" in text or f"{o}," in text}, text
    assert all(n in text for n in news), text


def test_defaults_are_the_new_flags_own(parse):
    """An alias sets no default of its own (it would hide the new flag's)."""
    assert parse(ablations, []).output == "results" and parse(ablations, []).data_root is None
    assert parse(import_official.main, ["src", "--output=o.ckpt"]).train_output_stride == 16
