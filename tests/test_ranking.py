"""The pairwise ranking term (training.ranking.WithRankLoss, --rank-loss-weight): value, masking, options, a run."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from bnp_cxr.training import MaskedL1, make_config
from bnp_cxr.training.ranking import RANK_TEMPERATURE, WithRankLoss

NAN = math.nan
LOG10_THRESHOLDS = np.log10([100.0, 400.0])  # BNP, BNPP (pg/mL)


def numpy_rank_cost(y_true: np.ndarray, y_pred: np.ndarray, temperature: float = RANK_TEMPERATURE) -> float:
    """Mean over (positive, negative) pairs of each output of T * log(1 + exp(-(p_pos - p_neg) / T))."""
    costs = []
    for output in range(2):
        known = ~np.isnan(y_true[:, output])
        positive = known & (np.nan_to_num(y_true[:, output]) > LOG10_THRESHOLDS[output])
        negative = known & ~positive
        for i in np.flatnonzero(positive):
            for j in np.flatnonzero(negative):
                costs.append(temperature * np.log1p(np.exp(-(y_pred[i, output] - y_pred[j, output]) / temperature)))
    return float(np.mean(costs)) if costs else 0.0


@pytest.mark.parametrize("y_true, y_pred", [
    ([[2.7, 3.3], [1.5, 2.0], [1.5, 2.0], [2.7, 3.3]], [[2.0, 2.5], [1.9, 2.6], [1.5, 2.0], [2.5, 3.0]]),
    ([[2.7, NAN], [1.5, 2.0], [NAN, 3.3], [1.2, NAN]], [[1.0, 2.5], [1.9, 2.6], [1.5, 3.5], [2.5, 3.0]]),
    ([[1.5, 2.0], [1.2, 2.1]], [[2.0, 2.5], [1.9, 2.6]]),  # no positive: no pair, the lab loss alone
    ([[NAN, NAN], [2.7, NAN]], [[2.0, 2.5], [1.9, 2.6]]),
])
def test_rank_term_matches_numpy_and_adds_to_the_lab_loss(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32)
    lab = float(MaskedL1()(y_true, y_pred))
    total = float(WithRankLoss(rank_weight=2.0)(y_true, y_pred))
    assert total == pytest.approx(lab + 2.0 * numpy_rank_cost(y_true, y_pred), rel=1e-5, abs=1e-6)


def test_rank_term_falls_as_positives_move_above_negatives_and_its_gradient_is_finite():
    y_true = tf.constant([[2.7, 3.3], [1.5, NAN], [NAN, 2.0]])
    loss = WithRankLoss(rank_weight=1.0)
    ordered = tf.constant([[2.9, 3.5], [1.0, 2.0], [1.0, 1.9]])
    reversed_ = tf.constant([[1.0, 1.9], [2.9, 2.0], [1.0, 3.5]])
    assert float(loss(y_true, ordered) - MaskedL1()(y_true, ordered)) < float(
        loss(y_true, reversed_) - MaskedL1()(y_true, reversed_))
    prediction = tf.Variable(reversed_)
    with tf.GradientTape() as tape:
        value = loss(y_true, prediction)
    gradient = tape.gradient(value, prediction).numpy()
    assert np.isfinite(gradient).all() and gradient[0, 0] < 0  # the positive's score is pushed up


def test_rank_loss_round_trips_through_keras_serialisation():
    loss = WithRankLoss("l2", (1.0, 0.5), rank_weight=0.3, temperature=0.1)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (type(again), again.rank_weight, again.temperature, again.lab_loss.output_weights) == (
        WithRankLoss, 0.3, 0.1, (1.0, 0.5))
    y_true, y_pred = tf.constant([[2.7, 3.3], [1.5, 2.0]]), tf.constant([[2.0, 2.5], [1.9, 2.6]])
    assert float(again(y_true, y_pred)) == pytest.approx(float(loss(y_true, y_pred)))


@pytest.mark.parametrize("options, message", [
    ({"rank_loss_weight": -1.0}, "rank_loss_weight must be a finite number >= 0"),
    ({"rank_loss_weight": math.nan}, "rank_loss_weight must be a finite"),
    ({"rank_loss_weight": 1.0, "finding_loss_weight": 1.0}, "cannot be combined"),
])
def test_bad_rank_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(options)


def test_a_run_trains_with_the_rank_term_and_records_it(tmp_path):
    from archives import heart_records
    from bnp_cxr.cli.train import build_parser
    from bnp_cxr.training import train
    from bnp_cxr.training.arguments import training_options

    (tmp_path / "archive").mkdir()
    records = heart_records(tmp_path / "archive", tmp_path / "records", {"train": 16, "val": 8, "test": 4}, (64,),
                            severities=lambda rng, count: rng.random(count), seed=3,
                            bnp_on=lambda index: index % 2 == 0, bnpp_on=lambda index: True)
    seen = []

    class Loss(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.model.loss)

    args = build_parser().parse_args(["--records", str(records), "--run-dir", str(tmp_path / "run"), "--size", "64",
                                      "--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8",
                                      "--mixed-precision", "off", "--members", "1", "--pretrain", "none",
                                      "--model-px", "32", "--widths", "8", "16", "--rank-loss-weight", "0.5"])
    result = train(make_config(training_options(args)), callbacks=[Loss()], verbose=0, log=lambda _: None)
    assert type(seen[0]) is WithRankLoss and seen[0].rank_weight == 0.5
    assert json.loads((result.run_dir / "config.json").read_text())["rank_loss_weight"] == 0.5
    # a fresh process compiles the saved model with its loss (registered by load_compiled_model's import)
    code = ("import sys; from bnp_cxr.training import load_compiled_model; "
            "print(type(load_compiled_model(sys.argv[1]).loss).__name__)")
    loaded = subprocess.run([sys.executable, "-c", code, str(result.model_path)], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
    assert loaded.stdout.strip().splitlines()[-1] == "WithRankLoss"
