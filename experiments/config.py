"""Read the YAML configs the way the CLI composes them (base.yaml, then each --config, then overrides),
without instantiating anything — for cost counting and ablation planning."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"


def _merge(into: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def set_dotted(config: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def compose(configs: Sequence[str | Path] = (), overrides: Mapping[str, Any] | None = None) -> dict:
    config: dict = {}
    for path in [BASE_CONFIG, *configs]:
        _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    return config


def net_kwargs(config: dict) -> dict:
    return dict(config["model"]["net"].get("init_args", {}))


def eval_protocol(config: dict) -> dict:
    """eval_output_stride, eval_scales and eval_flip as SegmentationModule resolves them."""
    model, net = config["model"], net_kwargs(config)
    return {
        "output_stride": model.get("eval_output_stride") or net.get("output_stride", 16),
        "scales": tuple(model.get("eval_scales", (1.0,))),
        "flip": bool(model.get("eval_flip", False)),
    }


def to_cli_args(overrides: Mapping[str, Any]) -> list[str]:
    """{"model.eval_flip": True} → ["--model.eval_flip=true"] (values as YAML, which jsonargparse reads)."""
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in overrides.items()]
