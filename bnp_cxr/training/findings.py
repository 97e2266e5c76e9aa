"""Auxiliary finding heads: the records' finding columns (edema, effusion, pneumonia, ...) as extra targets.

Multi-task learning (Caruana, "Multitask Learning", Machine Learning 1997): a network that must also name a
radiograph's findings may learn features that tell them apart, e.g. on NIH the heart-failure signs from the
pneumonia or consolidation a lab-only model confuses them with (evaluate.py's auc_combined_vs_other_findings).
Measured on NIH (bench/nih_recipe.py recipes finding_heads*, README) it did not: below the default on every fold
tried, so it is off by default. With keep="best" the val loss that picks the epoch includes the finding term.
The heads exist only while training: they read the pooled features of the run's model, and model.keras is
that two-output model (its layers shared with the training model), so evaluation, ensembles and attribution
see no change. TrainConfig.finding_loss_weight > 0 turns them on.
"""

from __future__ import annotations

import os

import keras
from keras import layers, ops

from bnp_cxr.training.losses import OUTPUTS, WithLabLoss, _replicas_in_sync, _split_known

FINDING_LOGITS = "finding_logits"  # the auxiliary Dense layer: one logit per finding column
HEAD_INPUT = "head_dropout"  # models.build_model's pooled features after dropout, which the lab head reads too


def finding_columns(records_dir: str | os.PathLike) -> tuple[str, ...]:
    """The finding columns records carry; a ValueError naming the folder when there are none to train on."""
    from bnp_cxr.records.reader import record_findings

    columns = record_findings(records_dir)
    if not columns:
        raise ValueError(f"finding_loss_weight > 0 needs finding columns in the records, and {records_dir} has "
                         "none (summary.json finding_columns; data_manifests/README.md): pass 0 to train without")
    return columns


def with_finding_heads(model: keras.Model, n_findings: int) -> keras.Model:
    """A training model: `model`'s two lab outputs followed by one finding logit each, from its pooled features."""
    logits = layers.Dense(n_findings, dtype="float32", name=FINDING_LOGITS)(model.get_layer(HEAD_INPUT).output)
    outputs = layers.Concatenate(name="labs_and_findings")([model.output, logits])
    return keras.Model(model.inputs, outputs, name=f"{model.name}_with_{n_findings}_findings")


@keras.saving.register_keras_serializable(package="bnp_cxr")
class WithFindingLoss(WithLabLoss):
    """The lab loss (MaskedL1 / MaskedL2) on the first two columns plus `finding_weight` times the mean binary
    cross-entropy of the finding logits over the findings given (NaN = not given: no loss, no gradient)."""

    def __init__(self, lab_loss: str = "l1", output_weights: tuple[float, float] = (1.0, 1.0),
                 finding_weight: float = 1.0, name: str = "labs_and_findings", **kwargs):
        super().__init__(lab_loss, output_weights, name=name, **kwargs)
        self.finding_weight = float(finding_weight)

    def call(self, y_true, y_pred):
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        n_labs = len(OUTPUTS)
        labs = self.lab_loss.call(y_true[:, :n_labs], y_pred[:, :n_labs])
        labels, known = _split_known(y_true[:, n_labs:])
        entropy = ops.binary_crossentropy(labels, y_pred[:, n_labs:], from_logits=True) * known
        count = ops.maximum(ops.sum(known), 1.0)
        return labs + self.finding_weight * ops.sum(entropy, axis=-1) / (count * _replicas_in_sync())

    def get_config(self) -> dict:
        return {**super().get_config(), "finding_weight": self.finding_weight}


class SavedModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes `saved` (the two-output model inside a training model with finding heads)."""

    def __init__(self, saved: keras.Model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._saved = saved

    def set_model(self, model: keras.Model) -> None:
        super().set_model(self._saved)
