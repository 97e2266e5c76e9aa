"""The optimiser of a run (TrainConfig.optimizer) and its learning-rate schedule."""

from __future__ import annotations

from bnp_cxr.training.config import TrainConfig


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """A float for a constant rate, else a keras schedule (cosine decay and / or linear warm-up), per step."""
    import keras

    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "constant" and warmup_steps == 0:
        return config.lr
    total_steps = config.epochs * steps_per_epoch
    # CosineDecay with alpha=1 never decays: a constant rate after the warm-up.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.lr, decay_steps=max(total_steps - warmup_steps, 1),
        alpha=1.0 if config.schedule == "constant" else 0.0,
        warmup_target=config.lr if warmup_steps else None, warmup_steps=warmup_steps)


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """The configured Keras optimiser on the run's learning rate; Keras's defaults for every other setting.

    adam: keras Adam as is (no weight decay); adamw: decoupled weight decay `weight_decay` (0 decays nothing);
    sgd: `momentum` and, when > 0, decoupled weight decay.
    """
    import keras

    rate = learning_rate(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=config.weight_decay or None)
    return keras.optimizers.Adam(rate)
