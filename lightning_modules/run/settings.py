"""What makes a run the run it is: the settings a resume must share with its checkpoint (optimiser, schedule,
data, network), kept in every checkpoint so that a resume can be compared with the run it continues."""
from __future__ import annotations

import json
from typing import Any

#: the checkpoint keys: the settings at the time of the save, and every deliberate change so far
SETTINGS_KEY = "run_settings"
CHANGES_KEY = "config_changes"

TRAINER_KEYS = ("max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")
#: model options that do not change what is trained: the evaluation protocol, speed, and the initial weights
#: (a resume loads the checkpoint's)
MODEL_IGNORED = ("eval_output_stride", "eval_scales", "eval_flip", "eval_canvas", "compile", "channels_last",
                 "init_from", "net.init_args.weights")
#: data options that do not change the training batches: where the files are, loading speed, validation
DATA_IGNORED = ("root", "generate", "val_split", "val_batch_size", "num_workers", "pin_memory",
                "persistent_workers", "prefetch_factor")


def _leaves(tree: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON values only (tuples become lists): safe to store in a checkpoint and to compare."""
    return json.loads(json.dumps(values, default=str))


def run_settings(config: dict) -> dict[str, Any]:
    """{"model.lr": 0.007, "data.crop_size": 513, "trainer.max_steps": 30000, ...} of a resolved `fit` config
    (`config.as_dict()`): every setting that changes the run, dotted as on the command line."""
    trainer = config.get("trainer") or {}
    out: dict[str, Any] = {"seed_everything": config.get("seed_everything")}
    out.update({f"trainer.{k}": trainer.get(k) for k in TRAINER_KEYS})
    model = _leaves(config.get("model") or {}, "")
    out.update({f"model.{k}": v for k, v in model.items() if k and k not in MODEL_IGNORED})
    data = config.get("data") or {}
    out["data.class_path"] = data.get("class_path")
    init_args = _leaves(data.get("init_args") or {}, "")
    out.update({f"data.{k}": v for k, v in init_args.items() if k and k not in DATA_IGNORED})
    return _plain(out)


def checkpoint_settings(checkpoint: dict) -> dict[str, Any]:
    """The run settings a checkpoint was saved with; for a checkpoint saved before they were stored, what it
    holds anyway: the model's and datamodule's hyperparameters and the schedule's length."""
    if SETTINGS_KEY in checkpoint:
        return checkpoint[SETTINGS_KEY]
    out: dict[str, Any] = {}
    for key, value in (checkpoint.get("hyper_parameters") or {}).items():
        if not key.startswith("_") and key not in MODEL_IGNORED:
            out[f"model.{key}"] = value
    for key, value in (checkpoint.get("datamodule_hyper_parameters") or {}).items():
        if not key.startswith("_") and key not in DATA_IGNORED:
            out[f"data.{key}"] = value
    schedulers = checkpoint.get("lr_schedulers") or []
    if schedulers and "total_iters" in schedulers[0]:
        out["trainer.max_steps"] = schedulers[0]["total_iters"]
    return _plain(out)


def differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, config's value)} for the settings both know and that differ."""
    return {k: (saved[k], current[k]) for k in saved if k in current and saved[k] != current[k]}
