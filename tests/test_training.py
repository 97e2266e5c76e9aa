"""Training: masked loss and metrics, TrainConfig resolution, run folder, resume, and the train.py CLI."""

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from archives import heart_records
from bnp_cxr.models import DOWNSAMPLE_NAME
from bnp_cxr.records.reader import make_dataset
from bnp_cxr.training import (MaskedBalancedL1, MaskedL1, MaskedL2, MaskedMAE, ThresholdAUC, TrainConfig, make_config,
                              resolve, train)
from bnp_cxr.training.config import CPU_MEMBERS, gpus_visible, identity_mismatches
from bnp_cxr.training.loop import (BACKUP_DIR, HISTORY_FILE, MODEL_FILE, completed_epochs, data_fingerprint,
                                   learning_rate, read_history, strategy_kind,
                                   tensorboard_available)
from bnp_cxr.training.optimizers import make_optimizer
from bnp_cxr.workspace import SMALL_CNN_WIDTHS, RunDir

ROOT = Path(__file__).resolve().parents[1]
NAN = math.nan
SPLIT_SIZES = {"train": 24, "val": 8, "test": 4}


# ---------------------------------------------------------------- loss and metrics

@pytest.mark.parametrize("loss_class, y_true, y_pred, weights, expected", [
    (MaskedL1, [[2.0, 3.0]], [[2.5, 2.0]], (1, 1), (0.5 + 1.0) / 2),
    (MaskedL1, [[2.0, NAN], [NAN, 3.0]], [[2.5, 9.0], [9.0, 2.0]], (1, 1), (0.5 + 1.0) / 2),
    (MaskedL1, [[2.0, NAN], [NAN, 3.0]], [[2.5, 9.0], [9.0, 2.0]], (2, 0.5), (2 * 0.5 + 0.5 * 1.0) / 2),
    (MaskedL1, [[NAN, NAN], [NAN, NAN]], [[1.0, 2.0], [3.0, 4.0]], (1, 1), 0.0),
    (MaskedL1, [[2.0, 3.0], [NAN, NAN]], [[2.0, 3.0], [7.0, 7.0]], (1, 1), 0.0),
    (MaskedL2, [[2.0, 3.0]], [[2.5, 2.0]], (1, 1), (0.25 + 1.0) / 2),
    (MaskedL2, [[2.0, NAN], [NAN, 3.0]], [[2.5, 9.0], [9.0, 1.0]], (2, 0.5), (2 * 0.25 + 0.5 * 4.0) / 2),
    (MaskedL2, [[NAN, NAN], [NAN, NAN]], [[1.0, 2.0], [3.0, 4.0]], (1, 1), 0.0),
    # BNPP 1 positive (> 400 pg/mL = 2.6) in 4: (1.0 + mean(0.5, 0.1, 0)) / 2 over 4 of 5 known labels; BNP's one
    # label (> 100 pg/mL = 2) alone: its plain error 0.5 over 1 of 5
    (MaskedBalancedL1, [[NAN, 3.3], [NAN, 2.0], [NAN, 2.0], [NAN, 2.0], [2.5, NAN]],
     [[9.0, 2.3], [9.0, 2.5], [9.0, 2.1], [9.0, 2.0], [2.0, 9.0]], (1, 1), 0.6 * 4 / 5 + 0.5 / 5),
    (MaskedBalancedL1, [[NAN, 3.3], [NAN, 2.0], [NAN, 2.0], [NAN, 2.0], [2.5, NAN]],
     [[9.0, 2.3], [9.0, 2.5], [9.0, 2.1], [9.0, 2.0], [2.0, 9.0]], (2, 0.5), 0.5 * 0.6 * 4 / 5 + 2 * 0.5 / 5),
    (MaskedBalancedL1, [[2.0, 3.0]], [[2.5, 2.0]], (1, 1), (0.5 + 1.0) / 2),  # one label per output: plain L1
    (MaskedBalancedL1, [[NAN, 2.0], [NAN, 2.2]], [[9.0, 2.4], [9.0, 2.0]], (1, 1), 0.3),  # one class: plain mean
    (MaskedBalancedL1, [[NAN, NAN], [NAN, NAN]], [[1.0, 2.0], [3.0, 4.0]], (1, 1), 0.0),
])
def test_masked_loss_case_table(loss_class, y_true, y_pred, weights, expected):
    loss = loss_class(weights)(np.array(y_true, "float32"), np.array(y_pred, "float32"))
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_masked_l2_minimiser_is_the_mean_where_l1_takes_the_median():
    """Two-valued labels, 1 positive in 4: L2's best constant is the mean, L1's the majority (median) value."""
    labels = tf.constant([[NAN, 3.3]] + [[NAN, 2.0]] * 3, tf.float32)
    grid = np.linspace(1.8, 3.5, 171, dtype="float32")
    best = {loss.name: grid[np.argmin([float(loss(labels, tf.fill([4, 2], value))) for value in grid])]
            for loss in (MaskedL1(), MaskedL2())}
    assert best["masked_l2"] == pytest.approx((3.3 + 3 * 2.0) / 4, abs=0.011)
    assert best["masked_l1"] == pytest.approx(2.0, abs=0.011)


def test_balanced_l1_gives_one_positive_the_pull_of_all_negatives():
    """1 positive in 4 (BNPP), every prediction between the classes: plain L1 pulls the negatives 3 times as hard
    as the positive, so its best constant is the negatives' value; balanced, the two classes pull alike."""
    labels = tf.constant([[NAN, 3.3]] + [[NAN, 2.0]] * 3, tf.float32)
    pred = tf.Variable(tf.fill([4, 2], 2.5))
    for loss, ratio in ((MaskedL1(), 3.0), (MaskedBalancedL1(), 1.0)):
        with tf.GradientTape() as tape:
            value = loss(labels, pred)
        grad = tape.gradient(value, pred).numpy()[:, 1]
        assert grad[0] < 0 < grad[1] and grad[1:].sum() / -grad[0] == pytest.approx(ratio)


@pytest.mark.parametrize("loss_class", [MaskedL1, MaskedL2, MaskedBalancedL1])
@pytest.mark.parametrize("y_true", [[[NAN, NAN], [NAN, NAN]], [[2.0, NAN], [NAN, NAN]]])
def test_masked_loss_gradient_is_finite_and_zero_for_missing_labels(loss_class, y_true):
    pred = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    with tf.GradientTape() as tape:
        loss = loss_class()(tf.constant(y_true, tf.float32), pred)
    grad = tape.gradient(loss, pred).numpy()
    assert np.isfinite(float(loss)) and np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[np.isnan(np.array(y_true))], 0.0)


# One SGD step of a Dense-BatchNorm-Dense model on 2 logical CPUs; argv: "one" (one device), "two" (2 mirrored
# replicas) or "two_sync" (2 replicas, synchronised BatchNorm). One strategy per process: a second
# MirroredStrategy in the same process reuses collective instance keys and its all-reduces clash.
_ONE_STEP = """
import json, sys
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from bnp_cxr.models import synchronize_batchnorm
from bnp_cxr.training import MaskedL1
rng = np.random.default_rng(0)
x = rng.random((4, 3), "float32")
x[2:] += 3.0  # the replicas' halves differ: per-replica BatchNorm moments differ from the global ones
y = rng.random((4, 2), "float32")
variant = sys.argv[1]
strategy = tf.distribute.get_strategy() if variant == "one" else tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    if variant == "two_sync":
        synchronize_batchnorm(model)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=MaskedL1())
history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
json.dump({"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"][0],
           "kernel": model.layers[0].kernel.numpy().tolist(),
           "moving_variance": model.layers[1].moving_variance.numpy().tolist()}, sys.stdout)
"""


def one_step(variant: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _ONE_STEP, variant], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_replicas_match_one_device():
    """One SGD step on 2 mirrored CPU replicas equals the step on one device: MaskedL1 does not double the
    loss or the gradients, and synchronised BatchNorm gives the global batch's statistics."""
    one, two, synced = one_step("one"), one_step("two"), one_step("two_sync")
    assert (one["replicas"], two["replicas"], synced["replicas"]) == (1, 2, 2)
    assert synced["loss"] == pytest.approx(one["loss"], rel=1e-5)
    np.testing.assert_allclose(synced["kernel"], one["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(synced["moving_variance"], one["moving_variance"], rtol=1e-5)
    # Per-replica BatchNorm (Keras's default) sees only half the batch: other statistics.
    assert not np.allclose(two["moving_variance"], one["moving_variance"], rtol=1e-3)


@pytest.mark.parametrize("weights", [(1.0,), (-1.0, 1.0), (0.0, 0.0)])
def test_masked_l1_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="output_weights"):
        MaskedL1(weights)


@pytest.fixture(scope="module")
def labelled_predictions():
    """Targets with ~30% missing per column and noisy predictions of them."""
    rng = np.random.default_rng(0)
    truth = rng.normal([2.0, 2.6], 0.6, size=(300, 2)).astype("float32")
    pred = (truth + rng.normal(0, 0.4, truth.shape)).astype("float32")
    truth[rng.random(truth.shape) < 0.3] = np.nan
    return truth, pred


@pytest.mark.parametrize("index", [0, 1])
def test_masked_mae_matches_numpy(labelled_predictions, index):
    truth, pred = labelled_predictions
    metric = MaskedMAE(index)
    for start in range(0, len(truth), 64):  # several batches accumulate
        metric.update_state(truth[start:start + 64], pred[start:start + 64])
    known = ~np.isnan(truth[:, index])
    assert float(metric.result()) == pytest.approx(np.abs(truth[known, index] - pred[known, index]).mean(), rel=1e-5)


@pytest.mark.parametrize("index, threshold_pg_ml", [(0, 100.0), (1, 400.0)])
def test_threshold_auc_matches_sklearn_on_known_labels(labelled_predictions, index, threshold_pg_ml):
    truth, pred = labelled_predictions
    metric = ThresholdAUC(index)
    assert metric.threshold_pg_ml == threshold_pg_ml
    metric.update_state(truth, pred)
    known = ~np.isnan(truth[:, index])
    expected = roc_auc_score(truth[known, index] > math.log10(threshold_pg_ml), pred[known, index])
    assert float(metric.result()) == pytest.approx(expected, abs=0.01)  # keras bins scores


@pytest.mark.parametrize("make", [lambda: MaskedL1((2.0, 0.5)), lambda: MaskedL2((1.0, 3.0)), lambda: MaskedMAE(1),
                                  lambda: MaskedBalancedL1((1.0, 2.0)), lambda: ThresholdAUC(0, 150.0)])
def test_loss_and_metrics_round_trip_through_keras_serialisation(make):
    original = make()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(restored) is type(original) and restored.get_config() == original.get_config()


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("n_gpus, given, mixed, want_backbone, want_mixed, says", [
    (0, None, "auto", "small_cnn", "off", "no GPU visible: using small_cnn"),
    (1, None, "auto", "resnet152", "on", "1 GPU(s) visible: using resnet152"),
    (0, "densenet121", "auto", "densenet121", "off", "Mixed precision off"),
    (2, "small_cnn", "off", "small_cnn", "off", None),
    (0, "small_cnn", "on", "small_cnn", "on", "slow on most CPUs"),
])
def test_resolve_picks_backbone_and_precision(n_gpus, given, mixed, want_backbone, want_mixed, says):
    config, notes = resolve(TrainConfig(backbone=given, mixed_precision=mixed, size=64), n_gpus)
    assert (config.backbone, config.mixed_precision) == (want_backbone, want_mixed)
    assert config.run_dir == os.path.abspath("work/runs/size64") and os.path.isabs(config.records_dir)
    if says:
        assert any(says in note for note in notes), notes


@pytest.mark.parametrize("options, n_gpus, expected, says", [
    ({}, 0, True, "Other-site augmentation on (the small_cnn recipe"),
    ({}, 1, False, "Other-site augmentation off (as the paper"),
    ({"backbone": "resnet50"}, 0, False, "Other-site augmentation off"),
    ({"augment": False}, 0, False, None),  # no augmentation at all: nothing to say about a part of it
    ({"site_augment": False}, 0, False, None),
    ({"site_augment": True, "backbone": "resnet50"}, 1, True, None),
])
def test_site_augment_resolves_by_recipe(options, n_gpus, expected, says):
    config, notes = resolve(make_config(options), n_gpus)
    assert config.site_augment is expected
    said = [note for note in notes if note.startswith("Other-site augmentation")]
    assert len(said) == (says is not None) and all(says in note for note in said)


@pytest.mark.parametrize("options, n_gpus, expected, says", [
    ({}, 0, False, None), ({}, 1, False, None),  # off by default, the CPU recipe included (README)
    ({"train_on_val": True}, 0, True, "(--train-on-val)"),
    ({"train_on_val": True, "backbone": "resnet50"}, 1, True, "(--train-on-val)"),
])
def test_train_on_val_is_off_unless_asked_and_calls_val_in_sample(options, n_gpus, expected, says):
    config, notes = resolve(make_config(options), n_gpus)
    assert config.train_on_val is expected
    said = [note for note in notes if note.startswith("The val images are fitted on too")]
    assert len(said) == (says is not None) and all(says in note and "in-sample" in note for note in said)


@pytest.mark.parametrize("options, n_gpus, expected, says", [
    ({"size": 256}, 0, 128, "area-averaged to 128 px (the small_cnn recipe"),
    ({"size": 64}, 0, 64, None),  # below the recipe's resolution: read in full
    ({"size": 256}, 1, 256, None),  # the paper's backbone reads the records in full
    ({"size": 256, "model_px": 64}, 1, 64, "area-averaged to 64 px (--model-px"),
    ({"size": 256, "model_px": 256}, 0, 256, None),
    ({"size": 256, "model_px": 1024}, 0, 256, None),  # at most the records' size
])
def test_model_px_resolves_by_recipe(options, n_gpus, expected, says):
    config, notes = resolve(make_config(options), n_gpus)
    assert config.model_px == expected
    assert config.widths == (SMALL_CNN_WIDTHS if config.backbone == "small_cnn" else None)
    said = [note for note in notes if note.startswith("The model reads")]
    assert len(said) == (says is not None) and all(says in note for note in said)


def test_paper_preset_and_explicit_options_win():
    paper = make_config({}, preset="paper")
    assert (paper.backbone, paper.weights, paper.loss, paper.loss_weights, paper.keep, paper.preset) == (
        "resnet152", "imagenet", "l1", (1, 1), "best", "paper")
    assert (TrainConfig().loss, TrainConfig().keep) == ("l1", "last")
    mine = make_config({"lr": 3e-4, "backbone": "resnet50"}, preset="paper")
    assert (mine.backbone, mine.lr, mine.weights) == ("resnet50", 3e-4, "imagenet")


@pytest.mark.parametrize("options, message", [
    ({"schedule": "linear"}, "schedule"), ({"size": 16}, "size"), ({"loss_weights": (0.0, 0.0)}, "loss_weights"),
    ({"backbone": "vgg16"}, "backbone"), ({"warmup_epochs": 5, "epochs": 5}, "warmup"),
    ({"mixed_precision": "maybe"}, "mixed_precision"), ({"nonsense": 1}, "unknown options"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"), ({"weight_decay": 1e-4}, "weight_decay needs"),
    ({"optimizer": "adamw", "weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"optimizer": "adamw", "momentum": 0.9}, "momentum is an sgd setting"),
    ({"optimizer": "sgd", "momentum": 1.0}, "momentum must be in"), ({"loss": "huber"}, "loss must be one of"),
    ({"keep": "first"}, "keep must be one of"),
    ({"site_augment": True, "augment": False}, "site_augment is part of the training augmentation"),
    ({"size": 256, "model_px": 96}, "model_px must divide the image size: 256 px"),
    ({"model_px": 0}, "model_px must divide"),
    ({"backbone": "resnet50", "widths": (8,)}, "widths .* need backbone small_cnn"), ({"widths": (0, 8)}, "widths"),
    ({"train_on_val": True, "keep": "best"}, "train_on_val fits on the val images, so they cannot pick"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(options)


def test_config_json_round_trip_and_identity_mismatches():
    config = TrainConfig(size=64, loss_weights=(1.0, 2.0), backbone="small_cnn")
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    longer = TrainConfig(size=64, loss_weights=(1.0, 2.0), backbone="small_cnn", epochs=50)
    assert identity_mismatches(config, longer) == []
    assert identity_mismatches(config, TrainConfig(size=128, backbone="small_cnn")) == [
        "size: 64 -> 128", "loss_weights: (1.0, 2.0) -> (1.0, 1.0)"]
    assert identity_mismatches(TrainConfig(model_px=128), TrainConfig(model_px=256)) == ["model_px: 128 -> 256"]
    # a config.json saved before model_px existed: that model read its records in full
    saved = {key: value for key, value in TrainConfig(size=256).to_json().items() if key != "model_px"}
    saved = {key: value for key, value in saved.items() if key != "widths"}
    assert (TrainConfig.from_json(saved).model_px, TrainConfig.from_json(saved).widths) == (256, (24, 48, 96, 160))
    assert TrainConfig.from_json({**saved, "backbone": "resnet50"}).widths is None
    assert identity_mismatches(TrainConfig(widths=(8,)), TrainConfig(widths=(8, 16))) == ["widths: (8,) -> (8, 16)"]
    # a run saved before the views' resolution existed pretrained on views at --size; without pretraining the
    # pretraining's settings are not part of what a run learnt
    before = TrainConfig.from_json({key: value for key, value in TrainConfig(pretrain="simclr").to_json().items()
                                    if key != "pretrain_view_res"})
    assert identity_mismatches(before, TrainConfig(pretrain="simclr")) == ["pretrain_view_res: 'input' -> 'model'"]
    assert identity_mismatches(dataclasses.replace(before, pretrain="none"),
                               TrainConfig(pretrain="none", pretrain_epochs=10)) == []
    assert identity_mismatches(TrainConfig(pretrain="none"), TrainConfig(pretrain="simclr")) == [
        "pretrain: 'none' -> 'simclr'"]


@pytest.mark.parametrize("tf_config, n_gpus, expected", [
    (None, 0, "default"), (None, 1, "default"), (None, 4, "mirrored"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}', 1, "multi_worker"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}', 2, "mirrored"),
])
def test_strategy_kind(tf_config, n_gpus, expected):
    assert strategy_kind(tf_config, n_gpus) == expected


@pytest.mark.parametrize("options, reference", [
    ({}, lambda: keras.optimizers.Adam(1e-3)),  # the default is Keras's Adam, untouched
    ({"optimizer": "adamw", "weight_decay": 1e-4}, lambda: keras.optimizers.AdamW(1e-3, weight_decay=1e-4)),
    ({"optimizer": "adamw"}, lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.0)),
    ({"optimizer": "sgd"}, lambda: keras.optimizers.SGD(1e-3)),
    ({"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4},
     lambda: keras.optimizers.SGD(1e-3, momentum=0.9, weight_decay=1e-4)),
])
def test_make_optimizer_builds_the_configured_keras_optimizer(options, reference):
    optimizer = make_optimizer(TrainConfig(schedule="constant", **options), steps_per_epoch=10)
    expected = reference()
    unnamed = [{key: value for key, value in opt.get_config().items() if key != "name"} for opt in (optimizer, expected)]
    assert type(optimizer) is type(expected) and unnamed[0] == unnamed[1]


@pytest.mark.parametrize("schedule, warmup_epochs, checks", [
    ("constant", 0, {0: 1e-3, 99: 1e-3}),
    ("constant", 2, {0: 0.0, 10: 5e-4, 20: 1e-3, 99: 1e-3}),
    ("cosine", 0, {0: 1e-3, 50: 5e-4, 100: 0.0}),
    ("cosine", 2, {0: 0.0, 20: 1e-3, 60: 5e-4}),
])
def test_learning_rate_schedules(schedule, warmup_epochs, checks):
    config = TrainConfig(lr=1e-3, schedule=schedule, warmup_epochs=warmup_epochs, epochs=10)
    rate = learning_rate(config, steps_per_epoch=10)
    for step, expected in checks.items():
        value = rate if isinstance(rate, float) else float(rate(step))
        assert value == pytest.approx(expected, abs=1e-9), step


# ---------------------------------------------------------------- tiny records and runs

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """36 radiograph-like PNGs whose bright 'heart' grows with the label; explicit splits; records at 64 px."""
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLIT_SIZES, (64,),
                         severities=lambda rng, count: rng.random(count), seed=1,
                         bnp_on=lambda index: index % 3 == 0 or index % 5 == 0, bnpp_on=lambda index: index % 3 != 0)


def tiny_config(records, run_dir, **options) -> TrainConfig:
    base = {"records_dir": str(records), "size": 64, "backbone": "small_cnn", "epochs": 2, "batch_size": 8,
            "run_dir": str(run_dir), "shuffle_buffer": 64, "members": 1}
    return make_config({**base, **options})


@pytest.mark.parametrize("options, expected", [
    ({"site_augment": False}, "plain"), ({"site_augment": True}, "site"), ({"augment": False}, None),
])
def test_train_datasets_use_the_site_augmentation_only_when_asked(records, tmp_path, monkeypatch, options, expected):
    from bnp_cxr.records import reader
    from bnp_cxr.records.augment import SITE_AUGMENT, AugmentConfig
    from bnp_cxr.training.inputs import make_datasets

    asked = {}

    def recording(records_dir, split, size, **kwargs):
        asked.setdefault(split if isinstance(split, str) else "+".join(split), kwargs.get("augment"))
        return make_dataset(records_dir, split, size, **kwargs)

    monkeypatch.setattr(reader, "make_dataset", recording)
    config, _ = resolve(tiny_config(records, tmp_path / "run", **options), 0)
    make_datasets(config, data_fingerprint(records, 64), 1, 1, 1)
    assert asked["train"] == {"plain": AugmentConfig(), "site": SITE_AUGMENT, None: None}[expected]
    assert asked["val"] is None


def test_train_on_val_fits_the_train_and_val_images_and_says_val_is_in_sample(records, tmp_path):
    from bnp_cxr.training.inputs import make_datasets

    fingerprint = data_fingerprint(records, 64)
    n_train, n_val = fingerprint["images"]["train"], fingerprint["images"]["val"]
    seen = {}
    for train_on_val in (False, True):
        config, notes = resolve(tiny_config(records, tmp_path / "run", train_on_val=train_on_val, batch_size=4), 0)
        train_data, _, steps, _ = make_datasets(config, fingerprint, 1, 1, 1)
        seen[train_on_val] = sum(int(images.shape[0]) for images, _ in train_data)
        assert steps == (n_train + n_val * train_on_val) // 4
        assert any("in-sample" in note for note in notes) == train_on_val
    assert seen == {False: n_train // 4 * 4, True: (n_train + n_val) // 4 * 4} and seen[True] > seen[False]


@pytest.fixture(scope="module")
def finished_run(records, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "size64"
    return train(tiny_config(records, run_dir), verbose=0, log=lambda _: None)


def test_run_folder_holds_model_config_history_and_logs(finished_run, records):
    from bnp_cxr.training import load_compiled_model

    run_dir = finished_run.run_dir
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["size"] == 64 and saved["records_dir"] == str(records) and saved["backbone"] == "small_cnn"
    assert saved["mixed_precision"] == ("on" if gpus_visible() else "off") and saved["seed"] == 0
    assert (saved["optimizer"], saved["weight_decay"], saved["compute"]["optimizer"]) == (
        "adam", 0.0, "LossScaleOptimizer" if gpus_visible() else "Adam")
    assert saved["standardize"] == "clahe"  # the small_cnn recipe's input standardisation, resolved and saved
    assert set(saved["versions"]) >= {"tensorflow", "keras", "numpy", "bnp_cxr"}
    assert saved["data"] == data_fingerprint(records, 64) and saved["data"]["images"] == SPLIT_SIZES
    assert saved["train_on_val"] is False  # val held out, as the CPU recipe's default
    assert saved["steps_per_epoch"] == SPLIT_SIZES["train"] // 8
    history = read_history(run_dir / HISTORY_FILE)
    assert [row["epoch"] for row in history] == [0, 1] and finished_run.epochs_completed == 2
    assert {"loss", "val_loss", "mae_log10_bnpp", "val_auc_bnpp_gt_400", "val_auc_bnp_gt_100"} <= set(history[0])
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["val_loss"]) for row in history)
    assert finished_run.best_val_loss == min(row["val_loss"] for row in history)
    assert (run_dir / BACKUP_DIR / "latest.weights.h5").is_file()
    if tensorboard_available():
        assert list((run_dir / "logs").rglob("*tfevents*"))
    else:
        assert not (run_dir / "logs").exists() and any("TensorBoard is not installed" in n for n in finished_run.notes)
    model = load_compiled_model(run_dir / MODEL_FILE)
    assert model.predict(np.zeros((3, 64, 64, 1), "float32"), verbose=0).shape == (3, 2)
    assert isinstance(model.loss, MaskedL1)
    # model.keras is the last epoch (keep="last", the default), and each epoch's validation read the whole split.
    assert saved["keep"] == "last"
    val = make_dataset(records, "val", 64, batch_size=8, deterministic=True, standardize=saved["standardize"])
    scores = model.evaluate(val, verbose=0, return_dict=True)
    assert scores["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-4)


@pytest.mark.parametrize("keep, best_only", [("last", False), ("best", True)])
def test_keep_chooses_what_the_model_checkpoint_writes(keep, best_only, tmp_path):
    from keras.callbacks import ModelCheckpoint

    from bnp_cxr.training.loop import _callbacks

    callbacks = _callbacks(tmp_path, tmp_path / "backup", 0.5, [], keep=keep, tensorboard=False)
    (checkpoint,) = [callback for callback in callbacks if isinstance(callback, ModelCheckpoint)]
    assert checkpoint.save_best_only is best_only and checkpoint.filepath == str(tmp_path / MODEL_FILE)


def test_data_fingerprint_changes_with_the_records(records, tmp_path):
    import shutil

    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    before = data_fingerprint(copy, 64)["sha256"]
    # Records written at another size rewrite summary.json (timings, other sizes): not this size's data.
    summary = json.loads((copy / "summary.json").read_text())
    summary["elapsed_s"] += 1
    summary["per_size"]["512"] = {"train": 1}
    (copy / "summary.json").write_text(json.dumps(summary))
    assert data_fingerprint(copy, 64)["sha256"] == before
    shard = sorted(copy.glob("val-64px-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes() + b"\0")
    assert data_fingerprint(copy, 64)["sha256"] != before


def test_existing_run_dir_needs_resume(finished_run, records):
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(records, finished_run.run_dir), verbose=0, log=lambda _: None)


def test_resume_refuses_changed_settings(finished_run, records):
    config = make_config({"run_dir": str(finished_run.run_dir), "size": 64, "lr": 0.5}, resume=True)
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.5"):
        train(config, verbose=0, log=lambda _: None)


class Crash(Exception):
    """A simulated interruption."""


class Interrupt(keras.callbacks.Callback):
    """Stops training like a crash right after an epoch has been fully recorded."""

    def __init__(self, after_epoch: int):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise Crash(f"interrupted after epoch {epoch}")


@pytest.mark.parametrize("train_on_val", [False, True])
def test_resume_continues_from_the_last_completed_epoch(records, tmp_path, train_on_val):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_config(records, run_dir, epochs=3, train_on_val=train_on_val), callbacks=[Interrupt(1)],
              verbose=0, log=lambda _: None)
    assert [row["epoch"] for row in read_history(run_dir / HISTORY_FILE)] == [0, 1]
    assert completed_epochs(run_dir) == 2
    # Only the run folder and --resume: the rest comes from the run's config.json.
    seen = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

        def on_train_end(self, logs=None):
            seen.append(int(self.model.optimizer.iterations.numpy()))

    result = train(make_config({"run_dir": str(run_dir), "size": 64}, resume=True), callbacks=[Epochs()],
                   verbose=0, log=lambda _: None)
    steps = (SPLIT_SIZES["train"] + SPLIT_SIZES["val"] * train_on_val) // 8  # --train-on-val resumes as trained
    assert seen == [2, 3 * steps]  # one epoch run; the optimizer's step count was restored
    assert [row["epoch"] for row in read_history(run_dir / HISTORY_FILE)] == [0, 1, 2]
    assert result.epochs_completed == 3 and result.config.epochs == 3
    sessions = json.loads((run_dir / "config.json").read_text())["sessions"]
    assert [(s["initial_epoch"], s["epochs"], s["resumed"]) for s in sessions] == [(0, 3, False), (2, 3, True)]
    assert all("tensorflow" in s["versions"] and s["notes"] for s in sessions)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--verbose", "2", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_trains_with_default_backbone_and_refuses_to_clobber(records, tmp_path):
    env_args = ("--records", str(records), "--size", "64", "--epochs", "1", "--batch-size", "8", "--n-boot", "1000")
    first = run_cli(*env_args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    n_gpus = gpus_visible()  # the CLI's subprocess sees the same devices
    expected = f"{n_gpus} GPU(s) visible: using resnet152" if n_gpus else "no GPU visible: using small_cnn"
    assert expected in first.stdout
    run_dir = tmp_path / "work" / "runs" / "size64"
    assert (run_dir / MODEL_FILE).is_file() and (run_dir / "config.json").is_file()
    # The CPU recipe is an ensemble (training.ensemble): one run folder per member, each with its history.
    members = CPU_MEMBERS if not n_gpus else 1
    kept = f"mean of {members} members, each at its last epoch" if members > 1 else "last epoch"
    assert "1 of 1 epochs done" in first.stdout and f"model ({kept})" in first.stdout
    for run in [RunDir(run_dir).member(k) for k in range(members)] if members > 1 else [RunDir(run_dir)]:
        with open(run.history) as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["0"]
    # Training ends with the test-split evaluation (issue #3: evaluate.py also runs at the end of training).
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and (run_dir / "roc.png").is_file() and (run_dir / "predictions.csv").is_file()
    assert "auc_" in first.stdout and "test split" in first.stdout
    again = run_cli(*env_args, cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr


@pytest.mark.parametrize("loss_name, loss_class", [("l2", MaskedL2), ("l1_balanced", MaskedBalancedL1)])
def test_cli_optimizer_loss_and_site_augment_options_are_used_and_recorded(records, tmp_path, loss_name, loss_class):
    from bnp_cxr.cli.train import build_parser
    from bnp_cxr.training import load_compiled_model
    from bnp_cxr.training.arguments import training_options

    args = build_parser().parse_args(["--optimizer", "adamw", "--weight-decay", "1e-4", "--records", str(records),
                                      "--run-dir", str(tmp_path / "run"), "--size", "64", "--backbone", "small_cnn",
                                      "--epochs", "1", "--batch-size", "8", "--mixed-precision", "off", "--loss",
                                      loss_name, "--members", "1", "--site-augment", "--model-px", "32", "--widths",
                                      "8", "16", "--train-on-val"])
    seen = []

    class Optimizer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append((self.model.optimizer, self.model.loss))

    result = train(make_config(training_options(args)), callbacks=[Optimizer()], verbose=0, log=lambda _: None)
    optimizer, loss = seen[0]
    assert type(optimizer) is keras.optimizers.AdamW and optimizer.weight_decay == pytest.approx(1e-4)
    assert type(loss) is loss_class
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert (saved["optimizer"], saved["weight_decay"], saved["compute"]["optimizer"]) == ("adamw", 1e-4, "AdamW")
    assert saved["loss"] == loss_name and saved["site_augment"] is True and saved["model_px"] == 32
    model = load_compiled_model(result.run_dir / MODEL_FILE)
    assert type(model.loss) is loss_class and model.get_layer(DOWNSAMPLE_NAME).pool_size == (2, 2)
    assert saved["widths"] == [8, 16] and model.get_layer("features").output.shape[-1] == 16
    assert saved["train_on_val"] is True


def test_a_run_folder_from_before_the_optimizer_options_resumes(records, tmp_path):
    run_dir = tmp_path / "old"
    train(tiny_config(records, run_dir, epochs=1, mixed_precision="off", standardize="none"), verbose=0,
          log=lambda _: None)
    saved = json.loads((run_dir / "config.json").read_text())
    for name in ("optimizer", "weight_decay", "momentum", "standardize", "loss", "keep", "site_augment", "model_px",
                 "train_on_val"):
        del saved[name]
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="optimizer: 'adam' -> 'sgd'"):
        train(make_config({"run_dir": str(run_dir), "size": 64, "optimizer": "sgd"}, resume=True), verbose=0,
              log=lambda _: None)
    result = train(make_config({"run_dir": str(run_dir), "size": 64, "epochs": 2}, resume=True), verbose=0,
                   log=lambda _: None)
    assert result.epochs_completed == 2 and [row["epoch"] for row in result.history] == [0, 1]
    resumed = json.loads((run_dir / "config.json").read_text())
    assert (resumed["optimizer"], resumed["weight_decay"], resumed["compute"]["optimizer"]) == ("adam", 0.0, "Adam")
    assert resumed["standardize"] == "none"  # what a run saved before the option was trained with
    assert (resumed["loss"], resumed["keep"], resumed["site_augment"], resumed["train_on_val"]) == ("l1", "best", False,
                                                                                                  False)
    assert resumed["model_px"] == 64  # read in full, as every run before the option
    assert [session["resumed"] for session in resumed["sessions"]] == [False, True]


@pytest.mark.parametrize("per_split, says", [
    ({"train": {"written": 4}, "val": {"written": 2}}, True),  # --split-fractions TRAIN VAL 0
    ({"train": {"written": 4}, "test": {"written": 0}}, True),
    ({"train": {"written": 4}, "test": {"written": 2}}, False),
    (None, False),  # no summary.json: the reader's own error is the message
])
def test_train_cli_names_a_missing_test_split_as_a_choice(tmp_path, per_split, says):
    from bnp_cxr.cli.train import _no_test_split

    if per_split is not None:
        (tmp_path / "summary.json").write_text(json.dumps({"per_split": per_split}))
    message = _no_test_split(str(tmp_path))
    assert (message is not None) == says
    assert not says or ("no test split" in message and "evaluate.py" in message and "--out" in message)
