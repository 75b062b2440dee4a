"""Read the YAML configs the way the CLI composes them (base.yaml, then each --config, then overrides),
without instantiating anything — for cost counting and ablation planning."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.components.protocol import PAPER_CROP, EvalProtocol, protocol_from

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


def eval_protocol(config: dict) -> EvalProtocol:
    """The evaluation protocol as SegmentationModule resolves it: `model.eval_output_stride` (None = the
    net's training output stride), `model.eval_scales`, `model.eval_flip`, `model.eval_canvas` ([513, 513])."""
    model = config["model"]
    protocol = protocol_from(model.get("eval_output_stride"), model.get("eval_scales", (1.0,)),
                             bool(model.get("eval_flip", False)), model.get("eval_canvas", [PAPER_CROP, PAPER_CROP]))
    return protocol.resolve(net_kwargs(config).get("output_stride", 16))


def to_cli_args(overrides: Mapping[str, Any]) -> list[str]:
    """{"model.eval_flip": True} → ["--model.eval_flip=true"] (values as YAML, which jsonargparse reads)."""
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in overrides.items()]
