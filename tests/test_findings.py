"""Auxiliary finding heads (bnp_cxr.training.findings): loss, targets, training, saved model, refusals."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from archives import heart_records
from bnp_cxr.records.reader import make_dataset, record_findings
from bnp_cxr.training import TrainConfig, load_compiled_model, make_config, train
from bnp_cxr.training.config import identity_mismatches
from bnp_cxr.training.findings import FINDING_LOGITS, WithFindingLoss
from bnp_cxr.training.losses import MaskedL1, MaskedL2
from bnp_cxr.workspace import RunDir

NAN = math.nan
SPLIT_SIZES = {"train": 16, "val": 8, "test": 4}


def binary_cross_entropy(label: float, logit: float) -> float:
    probability = 1 / (1 + math.exp(-logit))
    return -(label * math.log(probability) + (1 - label) * math.log(1 - probability))


@pytest.mark.parametrize("y_true, y_pred, weight", [
    ([[2.0, 3.0, 1.0, 0.0]], [[2.5, 2.0, 0.3, -1.2]], 1.0),
    ([[2.0, NAN, 1.0, NAN], [NAN, 3.0, NAN, 0.0]], [[2.5, 9.0, 2.0, 5.0], [9.0, 2.0, -4.0, 0.7]], 0.5),
    ([[2.0, 3.0, NAN, NAN]], [[2.5, 2.0, 3.0, -3.0]], 2.0),  # no finding given: the lab loss alone
    ([[2.0, 3.0, 1.0, 0.0]], [[2.5, 2.0, 0.3, -1.2]], 0.0),  # weight 0: the lab loss alone
])
@pytest.mark.parametrize("lab_loss", ["l1", "l2"])
def test_loss_is_the_lab_loss_plus_weighted_mean_cross_entropy_of_the_given_findings(y_true, y_pred, weight,
                                                                                     lab_loss):
    lab_class = {"l1": MaskedL1, "l2": MaskedL2}[lab_loss]
    truth, prediction = np.array(y_true, dtype="float32"), np.array(y_pred, dtype="float32")
    expected_labs = float(lab_class()(truth[:, :2], prediction[:, :2]))
    given = [(label, logit) for row, logits in zip(truth[:, 2:], prediction[:, 2:])
             for label, logit in zip(row, logits) if not math.isnan(label)]
    entropy = sum(binary_cross_entropy(label, logit) for label, logit in given) / max(len(given), 1)
    loss = WithFindingLoss(lab_loss, finding_weight=weight)(truth, prediction)
    assert float(loss) == pytest.approx(expected_labs + weight * entropy, rel=1e-5)


def test_gradient_is_finite_and_zero_for_findings_not_given():
    truth = tf.constant([[2.0, 3.0, NAN, 1.0]])
    prediction = tf.Variable([[2.5, 2.0, 4.0, 0.5]])
    with tf.GradientTape() as tape:
        loss = WithFindingLoss("l1", finding_weight=1.0)(truth, prediction)
    gradient = tape.gradient(loss, prediction).numpy()
    assert np.isfinite(gradient).all() and gradient[0, 2] == 0 and gradient[0, 3] != 0


def test_loss_round_trips_through_keras_serialisation():
    loss = WithFindingLoss("l2", (2.0, 0.5), finding_weight=0.3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, WithFindingLoss) and restored.get_config() == loss.get_config()


@pytest.fixture(scope="module")
def finding_records(tmp_path_factory):
    """Heart records with cardiomegaly and edema columns (edema empty on every third image) at 64 px."""
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLIT_SIZES, (64,),
                         severities=lambda rng, count: rng.random(count), seed=3, bnp_on=lambda index: True,
                         bnpp_on=lambda index: True, findings=True)


def test_finding_targets_follow_the_labs_with_nan_where_not_given(finding_records):
    assert record_findings(finding_records) == ("cardiomegaly", "edema")
    dataset = make_dataset(finding_records, "train", 64, batch_size=16, deterministic=True, finding_targets=True)
    _, targets = next(iter(dataset))
    labs, findings = targets.numpy()[:, :2], targets.numpy()[:, 2:]
    assert targets.shape == (16, 4) and np.isfinite(labs).all()
    assert set(np.unique(findings[:, 0])) == {0.0, 1.0}  # cardiomegaly: every image
    assert np.isnan(findings[:, 1]).sum() == 16 // 3 + 1  # edema: empty on images 0, 3, 6, ...
    # the heart's size drives both the labs and the cardiomegaly flag
    assert labs[findings[:, 0] == 1, 1].min() > labs[findings[:, 0] == 0, 1].max()


def tiny_config(records, run_dir, **options) -> TrainConfig:
    return make_config({"records_dir": str(records), "size": 64, "backbone": "small_cnn", "epochs": 2,
                        "batch_size": 8, "run_dir": str(run_dir), "shuffle_buffer": 64, "members": 1,
                        "pretrain": "none", **options})


def test_training_with_finding_heads_saves_the_two_output_model(finding_records, tmp_path):
    result = train(tiny_config(finding_records, tmp_path / "run", finding_loss_weight=0.5), verbose=0,
                   log=lambda _: None)
    run = RunDir(result.run_dir)
    saved = load_compiled_model(run.model)
    assert saved.output_shape == (None, 2) and type(saved.loss) is MaskedL1
    assert FINDING_LOGITS not in [layer.name for layer in saved.layers]
    assert json.loads(run.config.read_text())["finding_loss_weight"] == 0.5
    assert len(result.history) == 2 and all(math.isfinite(row["loss"]) for row in result.history)


def test_finding_heads_need_finding_columns_before_anything_runs(tmp_path_factory, tmp_path):
    plain = heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLIT_SIZES, (64,),
                          severities=lambda rng, count: rng.random(count), seed=4, bnp_on=lambda index: True,
                          bnpp_on=lambda index: True)
    with pytest.raises(ValueError, match=rf"finding_loss_weight > 0 needs finding columns .*{plain.name}"):
        train(tiny_config(plain, tmp_path / "run", finding_loss_weight=1.0), verbose=0, log=lambda _: None)
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("weight", [-0.1, math.inf, math.nan])
def test_bad_finding_loss_weights_are_refused(weight):
    with pytest.raises(ValueError, match="finding_loss_weight must be a finite number >= 0"):
        TrainConfig(finding_loss_weight=weight)


def test_the_finding_loss_weight_is_part_of_a_runs_identity():
    assert identity_mismatches(TrainConfig(), TrainConfig(finding_loss_weight=1.0))
    assert TrainConfig.from_json({}).finding_loss_weight == 0.0  # a run saved before the option: off
