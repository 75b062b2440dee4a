"""Dotted overrides as training-CLI arguments: how the ablation plan writes a row's settings into its jobs'
command lines, and how the cost counter parses the same rows (`experiments.cli.parse_only`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml


def to_cli_args(overrides: Mapping[str, Any]) -> list[str]:
    """{"model.eval_flip": True} → ["--model.eval_flip=true"] (values as YAML, which jsonargparse reads)."""
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in overrides.items()]
