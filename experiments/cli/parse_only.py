"""The training CLI's configuration without running anything: for the ablation dry run and the cost counter.

They parse with `TrainCLI` itself (base.yaml, then each `--config`, then the overrides), so they see
exactly what `fit` sees — `SegmentationModule`'s and `DeepLabV3Plus`'s defaults included, read from their
signatures by the parser, never repeated here. Parsing stops before anything is instantiated and before
the run checks and the run lock (`before_instantiate_classes`), so no data, weights or run directory is
needed. The parser is built once per `ConfigReader` (its build is the slow part) and reused for every row.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace

from datamodules.voc import DatasetError
from experiments.cli.checks import datamodule
from experiments.cli.training import BASE_CONFIG, CLI_KWARGS, TrainCLI
from lightning_modules.components.protocol import EvalProtocol, protocol_from


class ParseOnlyCLI(TrainCLI):
    """`TrainCLI` that parses and stops: no checks, no lock, no objects."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


class ConfigReader:
    """Parses configs + overrides as `python -m experiments.train fit` would (without the subcommand)."""

    def __init__(self) -> None:
        # `seed_everything: false` only for this first, empty parse: LightningCLI seeds at construction
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            self.cli = ParseOnlyCLI(**CLI_KWARGS, parser_kwargs={"default_config_files": [str(BASE_CONFIG)]},
                                    args=["--seed_everything=false"], run=False)

    def parse(self, configs: Sequence[str | Path] = (), args: Sequence[str] = ()) -> Namespace:
        """The resolved config of `--config <each of configs> <args>` (args: `--key=value` strings)."""
        cli_args = [*(arg for config in configs for arg in ("--config", str(config))), *args]
        with warnings.catch_warnings():  # Lightning's warning that `args` is given beside sys.argv (our own flags)
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            self.cli.parse_arguments(self.cli.parser, cli_args)
        return self.cli.config


@functools.cache
def config_reader() -> ConfigReader:
    """One reader per process: the dry run of a table parses every row with it."""
    return ConfigReader()


def net_kwargs(config: Namespace) -> dict:
    """`DeepLabV3Plus` constructor arguments as `fit` builds the network: the parsed `model.net.init_args`
    (defaults included) and the dataset's class count, which the CLI links to the network's."""
    kwargs = _net_args(config).as_dict()
    try:
        kwargs["num_classes"] = datamodule(config.data).num_classes
    except DatasetError:  # a layout that reads its class list from data not there yet: the parsed value
        pass
    return kwargs


def eval_protocol(config: Namespace) -> EvalProtocol:
    """The evaluation protocol as `SegmentationModule.__init__` resolves it from the same arguments."""
    model = config.model
    return protocol_from(model.eval_output_stride, model.eval_scales, model.eval_flip, model.eval_canvas).resolve(
        _net_args(config).output_stride)


def _net_args(config: Namespace) -> Namespace:
    net = config.model.net
    return net.init_args if "init_args" in net else net
