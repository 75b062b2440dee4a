"""DeepLabV3+ for Lightning: the LightningModule (`segmentation`), `load_model` (`pretrained`) and the metrics at
the top; the network in `components/`, a run's bookkeeping in `run/`, the official TF importer in `official/`.

Module paths of earlier versions still import (`OLD_MODULES`), so that a `config.yaml` written before the
bookkeeping moved into `run/` (its `class_path: lightning_modules.callbacks.StepCheckpoint`, …) resumes as it is.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: a module path of an earlier version → the modules that hold its classes and functions now
OLD_MODULES: dict[str, tuple[str, ...]] = {
    "lightning_modules.callbacks": ("lightning_modules.run.checkpoints", "lightning_modules.run.progress",
                                    "lightning_modules.run.wandb_predictions"),
    "lightning_modules.checkpointing": ("lightning_modules.run.checkpoints",),
    "lightning_modules.requeue": ("lightning_modules.run.preemption",),
    "lightning_modules.run_lock": ("lightning_modules.run.lock",),
    "lightning_modules.run_record": ("lightning_modules.run.record",),
    "lightning_modules.run_report": ("lightning_modules.run.report",),
    "lightning_modules.run_summary": ("lightning_modules.run.summary",),
    "lightning_modules.plots": ("lightning_modules.run.plots",),
    "lightning_modules.speed_monitor": ("lightning_modules.run.speed_monitor",),
    "lightning_modules.wandb_logger": ("lightning_modules.run.wandb_logger",),
    "lightning_modules.wandb_offline": ("lightning_modules.run.wandb_offline",),
    "lightning_modules.inference": ("lightning_modules.components.inference",),
    "lightning_modules.official_import": ("lightning_modules.official.importer",),
    "lightning_modules.tf_checkpoint": ("lightning_modules.official.tf_checkpoint",),
}


class _OldModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path only when no file has it, and fills it from the modules named in OLD_MODULES."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in OLD_MODULES else None

    def create_module(self, spec):
        return None  # Python's default module object

    def exec_module(self, module) -> None:
        for new in OLD_MODULES[module.__name__]:
            module.__dict__.update({k: v for k, v in vars(importlib.import_module(new)).items() if not k.startswith("__")})


if not any(isinstance(finder, _OldModules) for finder in sys.meta_path):
    sys.meta_path.append(_OldModules())
