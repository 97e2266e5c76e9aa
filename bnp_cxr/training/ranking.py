"""A pairwise ranking term beside the lab loss: positives should score above negatives, the order AUC measures.

L1 on log10 labs (Huynh et al., MIDL 2022) fits values; with a two-valued stand-in (NIH: 2000 or 100 pg/mL) its
optimum for an uncertain film is the majority value, which gives no reason to rank such films. This term is
RankNet's pairwise logistic loss (Burges et al., ICML 2005) over the (positive, negative) pairs of a batch, per
output at its positivity threshold (BNP > 100, BNPP > 400 pg/mL): a smooth surrogate of 1 - AUC, the idea of
deep AUC maximisation (Yuan et al., ICCV 2021). TrainConfig.rank_loss_weight > 0 turns it on.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from bnp_cxr.training.losses import OUTPUTS, THRESHOLDS_PG_ML, WithLabLoss, _replicas_in_sync, _split_known

RANK_TEMPERATURE = 0.25  # log10 units: a pair ordered by 1 log10 unit costs 0.25 * softplus(-4) = 0.005


@keras.saving.register_keras_serializable(package="bnp_cxr")
class WithRankLoss(WithLabLoss):
    """The lab loss (MaskedL1 / MaskedL2) plus `rank_weight` times the mean pairwise logistic loss
    T * softplus(-(p_pos - p_neg) / T) over the batch's (positive, negative) pairs of each output with both labs
    known, each output scaled by its weight; a batch without such a pair adds 0."""

    def __init__(self, lab_loss: str = "l1", output_weights: tuple[float, float] = (1.0, 1.0),
                 rank_weight: float = 1.0, temperature: float = RANK_TEMPERATURE, name: str = "labs_and_rank",
                 **kwargs):
        super().__init__(lab_loss, output_weights, name=name, **kwargs)
        self.rank_weight, self.temperature = float(rank_weight), float(temperature)

    def call(self, y_true, y_pred):
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        labs = self.lab_loss.call(y_true, y_pred)
        labels, known = _split_known(y_true)
        thresholds = ops.convert_to_tensor([math.log10(THRESHOLDS_PG_ML[name]) for name in OUTPUTS], "float32")
        positive = known * ops.cast(labels > thresholds, "float32")
        negative = known - positive
        pairs = positive[:, None, :] * negative[None, :, :]  # [i, j, output]: i positive, j negative
        margin = (y_pred[:, None, :] - y_pred[None, :, :]) / self.temperature
        weights = ops.convert_to_tensor(self.lab_loss.output_weights, "float32")
        costs = self.temperature * ops.softplus(-margin) * pairs * weights
        count = ops.maximum(ops.sum(pairs), 1.0)
        # each pair's cost is the share of its positive image, so the shares sum to the batch's mean pair cost
        return labs + self.rank_weight * ops.sum(costs, axis=(1, 2)) / (count * _replicas_in_sync())

    def get_config(self) -> dict:
        return {**super().get_config(), "rank_weight": self.rank_weight, "temperature": self.temperature}
