"""Masked L1 loss and masked metrics on [log10 BNP, log10 BNPP] targets where NaN marks a missing lab.

Huynh et al. (MIDL 2022) train with an L1 loss on log10 values. Most radiographs carry only one of the
two labs, so a missing label must contribute neither loss nor gradient.
"""

from __future__ import annotations

import math
import os

import keras
from keras import ops

from bnp_cxr.data.labs import PositivityThresholds

OUTPUTS = ("bnp", "bnpp")  # column order of targets and predictions
# The records' positivity thresholds in pg/mL (BNP > 100, NT-proBNP > 400).
THRESHOLDS_PG_ML = {"bnp": PositivityThresholds().bnp_pg_ml, "bnpp": PositivityThresholds().bnpp_pg_ml}


def _split_known(y_true):
    """(labels with NaN replaced by 0, float mask of known labels)."""
    known = ops.logical_not(ops.isnan(y_true))
    # Zero-filled before any arithmetic: NaN in an unselected where() branch still poisons gradients.
    return ops.where(known, y_true, ops.zeros_like(y_true)), ops.cast(known, y_true.dtype)


def _replicas_in_sync() -> float:
    """Replicas of the current tf.distribute strategy (1 outside one or on another backend)."""
    if keras.backend.backend() != "tensorflow":
        return 1.0
    import tensorflow as tf

    return float(tf.distribute.get_strategy().num_replicas_in_sync)


@keras.saving.register_keras_serializable(package="bnp_cxr")
class MaskedL1(keras.losses.Loss):
    """Mean absolute error over the known labels of a batch, each output scaled by its weight.

    loss = sum_ik w_k m_ik |y_ik - p_ik| / max(sum_ik m_ik, 1), m = label known; a batch with no
    known label gives 0. Under a distribution strategy each replica normalises by its own count and
    scales by 1 / replicas, as Keras's built-in reductions do, so that the all-reduced (summed)
    gradients and the logged loss are the mean over replicas, not N times it.
    """

    def __init__(self, output_weights: tuple[float, float] = (1.0, 1.0), name: str = "masked_l1", **kwargs):
        kwargs.pop("reduction", None)
        # call() returns each sample's share of the batch mean, so the batch loss is their sum.
        super().__init__(name=name, reduction="sum", **kwargs)
        if len(output_weights) != len(OUTPUTS) or min(output_weights) < 0 or not any(output_weights):
            raise ValueError(f"output_weights must be {len(OUTPUTS)} non-negative numbers, not all 0; "
                             f"got {output_weights}")
        self.output_weights = tuple(float(w) for w in output_weights)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        labels, known = _split_known(ops.cast(y_true, "float32"))
        weights = ops.convert_to_tensor(self.output_weights, dtype="float32")
        label_weights, normaliser = self.label_weights(labels, known)
        errors = self.error(labels - y_pred) * label_weights * weights
        return ops.sum(errors, axis=-1) / (normaliser * _replicas_in_sync())

    def label_weights(self, labels, known):
        """(each label's weight [B, 2], the batch's divisor): the known labels alike, over their count."""
        return known, ops.maximum(ops.sum(known), 1.0)

    def error(self, difference):
        """Per-label error of a label - prediction difference (log10 units)."""
        return ops.abs(difference)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("reduction", None)
        return {**config, "output_weights": list(self.output_weights)}


@keras.saving.register_keras_serializable(package="bnp_cxr")
class MaskedL2(MaskedL1):
    """MaskedL1 with squared errors: its minimiser is the conditional mean, not the median.

    With two-valued labels (stand-in labs of an image-level finding) the median of an uncertain image is
    the majority value, so L1 gives no reason to rank uncertain images; the mean is monotone in the
    probability of a positive, so L2 ranks them (bench/nih_recipe.py, recipe l1 against the default).
    """

    def __init__(self, output_weights: tuple[float, float] = (1.0, 1.0), name: str = "masked_l2", **kwargs):
        super().__init__(output_weights, name=name, **kwargs)

    def error(self, difference):
        """Squared difference (log10 units squared)."""
        return ops.square(difference)


@keras.saving.register_keras_serializable(package="bnp_cxr")
class MaskedBalancedL1(MaskedL1):
    """MaskedL1 in which each output's positives and negatives (at THRESHOLDS_PG_ML) weigh half each in a batch.

    An output's loss is the mean of its positives' mean error and its negatives' mean error (the plain mean
    where a batch holds only one class): inverse class-frequency weights, counted per batch (per replica's batch
    under a distribution strategy); outputs keep MaskedL1's weighting by their known labels. On ~20 % positives
    plain L1 fits the median, the negatives' value, for every film the model is unsure of; balanced, it fits a
    quantile near the prevalence instead, so unsure films are pulled apart rather than pressed onto the negatives.
    """

    def __init__(self, output_weights: tuple[float, float] = (1.0, 1.0), name: str = "masked_balanced_l1",
                 **kwargs):
        super().__init__(output_weights, name=name, **kwargs)
        self.thresholds_log10 = tuple(math.log10(THRESHOLDS_PG_ML[output]) for output in OUTPUTS)

    def label_weights(self, labels, known):
        """(each label's share of the batch loss [B, 2], divisor 1): half per class of each output, as above."""
        positive = ops.cast(labels > ops.convert_to_tensor(self.thresholds_log10, dtype="float32"), "float32")
        positives, negatives = positive * known, (1.0 - positive) * known
        n_positive, n_negative = ops.sum(positives, axis=0), ops.sum(negatives, axis=0)  # per output
        both = ops.cast((n_positive > 0) & (n_negative > 0), "float32")
        n_known = n_positive + n_negative
        # Each label's share of its output's mean: 1/(2 n_class) with both classes present, else 1/n_known.
        share = both * (positives / ops.maximum(2.0 * n_positive, 1.0) + negatives / ops.maximum(2.0 * n_negative, 1.0))
        share += (1.0 - both) * known / ops.maximum(n_known, 1.0)
        # Outputs weigh by their known labels as in MaskedL1: output k's mean times n_known_k / all known.
        share *= n_known / ops.maximum(ops.sum(known), 1.0)
        return share, 1.0


# TrainConfig.loss -> loss class
LOSSES = {"l1": MaskedL1, "l2": MaskedL2, "l1_balanced": MaskedBalancedL1}


class WithLabLoss(keras.losses.Loss):
    """Base of the losses that add a term to the lab loss (MaskedL1 / MaskedL2 by TrainConfig.loss name): it holds
    that loss and serialises it; a subclass's call() returns the lab loss's per-sample shares plus its own."""

    def __init__(self, lab_loss: str = "l1", output_weights: tuple[float, float] = (1.0, 1.0), *, name: str,
                 **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)  # per-sample shares of the batch mean, as MaskedL1
        self.lab_loss_name = lab_loss
        self.lab_loss = LOSSES[lab_loss](tuple(output_weights))

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("reduction", None)
        return {**config, "lab_loss": self.lab_loss_name, "output_weights": list(self.lab_loss.output_weights)}


def _column(values, index: int):
    return ops.cast(values[:, index], "float32")


@keras.saving.register_keras_serializable(package="bnp_cxr")
class MaskedMAE(keras.metrics.Metric):
    """Mean absolute error (log10 units) of one output over the samples whose label is known."""

    def __init__(self, output_index: int, name: str | None = None, **kwargs):
        super().__init__(name=name or f"mae_log10_{OUTPUTS[output_index]}", **kwargs)
        self.output_index = int(output_index)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, known = _split_known(_column(y_true, self.output_index))
        if sample_weight is not None:
            known = known * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        self.total.assign_add(ops.sum(ops.abs(labels - _column(y_pred, self.output_index)) * known))
        self.count.assign_add(ops.sum(known))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        return {"name": self.name, "output_index": self.output_index}


@keras.saving.register_keras_serializable(package="bnp_cxr")
class ThresholdAUC(keras.metrics.AUC):
    """ROC AUC of one predicted log10 value for 'label > threshold', over the samples whose label is known.

    keras.metrics.AUC bins scores on [0, 1], so the prediction is squashed by a sigmoid centred on
    the threshold (monotone: the AUC is unchanged up to binning); squash_scale spreads +-1 log10 unit.
    """

    def __init__(self, output_index: int, threshold_pg_ml: float | None = None, squash_scale: float = 2.0,
                 num_thresholds: int = 400, name: str | None = None, **kwargs):
        output = OUTPUTS[output_index]
        threshold_pg_ml = THRESHOLDS_PG_ML[output] if threshold_pg_ml is None else float(threshold_pg_ml)
        super().__init__(num_thresholds=num_thresholds, name=name or f"auc_{output}_gt_{threshold_pg_ml:g}", **kwargs)
        self.output_index, self.threshold_pg_ml, self.squash_scale = int(output_index), threshold_pg_ml, squash_scale
        self.threshold_log10 = math.log10(threshold_pg_ml)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, known = _split_known(_column(y_true, self.output_index))
        positive = ops.cast(labels > self.threshold_log10, "float32")
        score = ops.sigmoid(self.squash_scale * (_column(y_pred, self.output_index) - self.threshold_log10))
        if sample_weight is not None:
            known = known * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        return super().update_state(positive, score, sample_weight=known)

    def get_config(self) -> dict:
        return {"name": self.name, "output_index": self.output_index, "threshold_pg_ml": self.threshold_pg_ml,
                "squash_scale": self.squash_scale, "num_thresholds": self.num_thresholds}


def default_metrics() -> list[keras.metrics.Metric]:
    """Per-output masked MAE and AUC at the positivity thresholds (BNP > 100, BNPP > 400 pg/mL)."""
    return [MaskedMAE(0), MaskedMAE(1), ThresholdAUC(0), ThresholdAUC(1)]


def load_compiled_model(path: str | os.PathLike) -> keras.Model:
    """A saved run model compiled with its masked L1 loss and metrics (registered by this module)."""
    from bnp_cxr.models import load_model
    from bnp_cxr.training import ranking  # noqa: F401  registers WithRankLoss, the loss of runs with a rank term

    return load_model(path, compile=True)
