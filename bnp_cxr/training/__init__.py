"""Training: masked L1 / L2 losses and metrics, the run configuration, and the training loop (tools/train.py).

Names are imported on first use (PEP 562), so that `bnp_cxr.training.config` and `.arguments` (what a
command line needs to parse) load without Keras or TensorFlow; `losses` and `loop` bring them in.
"""

from __future__ import annotations

import importlib

_HOMES = {"PRESETS": "config", "TrainConfig": "config", "make_config": "config", "resolve": "config",
          "TrainResult": "loop", "train": "loop",
          "MaskedL1": "losses", "MaskedL2": "losses", "MaskedBalancedL1": "losses", "MaskedMAE": "losses",
          "ThresholdAUC": "losses",
          "default_metrics": "losses", "load_compiled_model": "losses"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
