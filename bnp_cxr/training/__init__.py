"""Training: masked L1 / L2 losses and metrics, the run configuration, and the training loop (tools/train.py).

`losses` needs only Keras; `config` and `loop` import TensorFlow lazily where they need it.
"""

from bnp_cxr.training.config import PRESETS, TrainConfig, make_config, resolve
from bnp_cxr.training.loop import TrainResult, train
from bnp_cxr.training.losses import MaskedL1, MaskedL2, MaskedMAE, ThresholdAUC, default_metrics, load_compiled_model

__all__ = ["PRESETS", "MaskedL1", "MaskedL2", "MaskedMAE", "ThresholdAUC", "TrainConfig", "TrainResult",
           "default_metrics", "load_compiled_model", "make_config", "resolve", "train"]
