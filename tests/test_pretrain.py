"""Self-supervised pretraining (training.pretrain): the NT-Xent loss, the views, the recipe's resolution, and the
encoder made, reused and loaded by a run end to end."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from archives import heart_records
from bnp_cxr.models import build_model, load_model
from bnp_cxr.training import make_config, resolve, train
from bnp_cxr.training.config import TrainConfig, identity_mismatches
from bnp_cxr.training.pretrain import (PRETRAIN, PretrainConfig, contrastive_view, ensure_encoder, nt_xent,
                                       pretrain_key, run_settings, unlabelled_images, view_encoder)
from bnp_cxr.workspace import RunDir

SIZE = 64
SPLITS = {"train": 12, "val": 4, "test": 4}


def hand_nt_xent(z: np.ndarray, temperature: float) -> float:
    """NT-Xent as Chen et al. (2020) write it: -log softmax of each view's partner among the other 2B - 1 views."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, half = len(z), len(z) // 2
    losses = []
    for i in range(n):
        partner = (i + half) % n
        similarities = np.array([z[i] @ z[k] / temperature for k in range(n) if k != i])
        losses.append(np.log(np.exp(similarities).sum()) - z[i] @ z[partner] / temperature)
    return float(np.mean(losses))


@pytest.mark.parametrize("batch, dim, temperature", [(2, 3, 0.5), (5, 8, 0.2), (8, 4, 1.0)])
def test_nt_xent_matches_a_hand_computation(batch, dim, temperature):
    z = np.random.default_rng(batch).normal(size=(2 * batch, dim)).astype(np.float32)
    loss, _ = nt_xent(tf.constant(z), temperature)
    assert float(loss) == pytest.approx(hand_nt_xent(z, temperature), rel=1e-4)


def test_nt_xent_pairs_identical_views():
    base = np.eye(6, dtype=np.float32)[:3] * 5
    loss, accuracy = nt_xent(tf.constant(np.concatenate([base, base])), 0.1)
    assert float(accuracy) == 1.0 and float(loss) < 1e-3
    swapped, wrong = nt_xent(tf.constant(np.concatenate([base, base[::-1]])), 0.1)
    assert float(wrong) < 1.0 and float(swapped) > 1.0  # the middle image still finds itself, the others do not


# The identity settings: full crop, no intensity change, no blur, no noise.
IDENTITY = PretrainConfig(min_crop_area=1.0, max_log_aspect=0.0, gamma_range=(1.0, 1.0), contrast_range=(1.0, 1.0),
                          max_brightness=0.0, blur_probability=0.0, noise_std=0.0)


@pytest.fixture(scope="module")
def images():
    """A left-right asymmetric batch: a bright block on the image's left half."""
    batch = np.random.default_rng(0).uniform(0.2, 0.4, (4, SIZE, SIZE, 1)).astype(np.float32)
    batch[:, 20:40, 5:25] = 0.9
    return batch


def test_a_view_without_changes_is_the_image(images):
    view = contrastive_view(tf.constant(images), tf.constant([1, 2], tf.int64), IDENTITY).numpy()
    np.testing.assert_allclose(view, images, atol=1e-5)  # and so never flipped


def test_views_are_random_but_reproducible(images):
    seed = tf.constant([4, 5], tf.int64)
    first = contrastive_view(tf.constant(images), seed).numpy()
    np.testing.assert_array_equal(first, contrastive_view(tf.constant(images), seed).numpy())
    other = contrastive_view(tf.constant(images), tf.constant([4, 6], tf.int64)).numpy()
    assert first.shape == images.shape and 0 <= first.min() and first.max() <= 1
    assert not np.allclose(first, other) and not np.allclose(first, images)


@pytest.mark.parametrize("view_px", [SIZE, SIZE // 2, SIZE // 4])
def test_smaller_views_keep_the_noise_an_area_average_would_leave(view_px):
    flat = np.full((8, SIZE, SIZE, 1), 0.5, np.float32)
    view = contrastive_view(tf.constant(flat), tf.constant([3, 1], tf.int64), IDENTITY, view_px).numpy()
    assert view.shape == (8, view_px, view_px, 1)
    np.testing.assert_allclose(view, 0.5, atol=1e-6)
    noisy = dataclasses.replace(IDENTITY, noise_std=0.08)
    view = contrastive_view(tf.constant(flat), tf.constant([3, 1], tf.int64), noisy, view_px).numpy()
    # i.i.d. noise at SIZE px averaged over (SIZE / view_px)^2 pixels: its standard deviation over SIZE / view_px
    assert view.std() == pytest.approx(0.08 * view_px / SIZE, rel=0.1)


@pytest.mark.parametrize("model_px, view_res, reads", [
    (SIZE // 2, "model", SIZE // 2),  # from the downsampling layer on
    (SIZE // 2, "input", SIZE),  # the whole model, its downsampling included (the views at SIZE)
    (SIZE, "model", SIZE),  # a model that reads its input in full has nothing to skip
])
def test_the_views_enter_the_model_where_their_resolution_says(model_px, view_res, reads):
    model = build_model("small_cnn", SIZE, model_px=model_px, widths=(8, 16))
    views = view_encoder(model, dataclasses.replace(PRETRAIN, view_res=view_res))
    assert views.input.shape[1:] == (reads, reads, 1) and views.output.shape[-1] == 16
    assert views.get_layer("stem_conv") is model.get_layer("stem_conv")  # training the views trains the model


@pytest.mark.parametrize("options, gpus, workers, pretrain, own_encoder", [
    ({}, 0, 1, "simclr", True),  # the CPU recipe
    ({"backbone": "small_cnn", "pretrain": "none"}, 0, 1, "none", False),
    ({}, 1, 1, "none", False),  # the paper's ResNet152 on a GPU starts from its own weights
    ({"weights": "given.keras"}, 0, 1, "none", False),  # a checkpoint of the user's own
    ({"weights": "given.keras", "pretrain": "simclr"}, 0, 1, "simclr", False),  # ... that is a pretrained encoder
    ({"backbone": "resnet50", "pretrain": "simclr"}, 1, 1, "simclr", True),
    ({}, 0, 2, "none", False),  # the CPU recipe on several workers: pretraining runs on one machine
])
def test_pretraining_resolves_by_recipe(tmp_path, options, gpus, workers, pretrain, own_encoder):
    config, notes = resolve(make_config({"run_dir": str(tmp_path / "run"), **options}), gpus, workers)
    assert config.pretrain == pretrain
    assert (config.weights == str(RunDir(tmp_path / "run").encoder)) == own_encoder
    assert any("Self-supervised pretraining" in note for note in notes) == ("pretrain" not in options and own_encoder)
    assert any("No self-supervised pretraining" in note for note in notes) == (workers > 1)


@pytest.mark.parametrize("options, message", [
    ({"pretrain": "byol"}, "pretrain must be one of"),
    ({"pretrain": "simclr", "weights": "imagenet"}, "cannot start from imagenet"),
    ({"pretrain_epochs": 0}, "pretrain_epochs must be >= 1"),
    ({"pretrain_min_crop": 0}, r"pretrain_min_crop must be in \(0, 1\]"),
    ({"pretrain_min_crop": 1.5}, r"pretrain_min_crop must be in \(0, 1\]"),
    ({"pretrain_view_res": "half"}, "pretrain_view_res must be one of"),
    ({"pretrain_temperature": 0}, r"pretrain_temperature must be in \(0, 10\]"),
])
def test_bad_pretraining_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(options)


def test_a_config_saved_before_pretraining_trained_without_it():
    saved = {key: value for key, value in TrainConfig(backbone="small_cnn").to_json().items()
             if key not in ("pretrain", "pretrain_epochs")}
    assert TrainConfig.from_json(saved).pretrain == "none"
    saved = {key: value for key, value in TrainConfig().to_json().items() if key != "pretrain_view_res"}
    assert TrainConfig.from_json(saved).pretrain_view_res == "input"


# ---------------------------------------------------------------- a run that pretrains, end to end

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLITS, (SIZE,),
                         severities=lambda rng, count: rng.random(count), seed=4, bnp_on=lambda index: True,
                         bnpp_on=lambda index: True)


def run_config(records, run_dir, resume=False, **options):
    base = {"records_dir": str(records), "size": SIZE, "backbone": "small_cnn", "epochs": 1, "batch_size": 8,
            "run_dir": str(run_dir), "shuffle_buffer": 16, "members": 2, "pretrain_epochs": 2}
    return make_config({**base, **options}, resume=resume)


@pytest.fixture(scope="module")
def pretrained_run(records, tmp_path_factory):
    lines = []
    result = train(run_config(records, tmp_path_factory.mktemp("runs") / "run"), verbose=0, log=lines.append)
    return result, lines


def test_pretraining_reads_train_and_val_never_test(records):
    config = resolve(run_config(records, "unused"), 0)[0]
    assert len(unlabelled_images(config)) == SPLITS["train"] + SPLITS["val"]


def test_the_members_start_from_the_run_encoder(pretrained_run):
    result, lines = pretrained_run
    run = RunDir(result.run_dir)
    assert run.encoder.is_file() and result.epochs_completed == 1
    summary = json.loads(run.encoder_key.read_text())
    assert summary["images"] == SPLITS["train"] + SPLITS["val"] and summary["key"]["pretrain_epochs"] == 2
    assert sum("Pretraining the small_cnn" in line for line in lines) == 1  # once, for both members
    assert sum(f"Weights from {run.encoder}" in line for line in lines) == 2
    for k in range(2):
        assert json.loads(run.member(k).config.read_text())["weights"] == str(run.encoder)
    # What a member starts from is the encoder's weights in the supervised model's layers
    encoder = load_model(run.encoder)
    started = build_model("small_cnn", SIZE, weights=str(run.encoder))
    for layer in encoder.layers:
        if layer.weights:
            for mine, theirs in zip(started.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(mine, theirs)


def test_a_resumed_run_reuses_its_encoder(pretrained_run, records):
    result, _ = pretrained_run
    encoder = RunDir(result.run_dir).encoder
    before = encoder.stat().st_mtime_ns
    lines = []
    train(run_config(records, result.run_dir, resume=True), verbose=0, log=lines.append)
    assert any(line.startswith("Pretrained encoder reused") for line in lines)
    assert encoder.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="pretrain_epochs: 2 -> 3"):
        train(run_config(records, result.run_dir, resume=True, pretrain_epochs=3), verbose=0, log=lambda _: None)


def test_a_changed_key_pretrains_again(pretrained_run, records, tmp_path):
    config = resolve(run_config(records, tmp_path / "other"), 0)[0]
    data = {"sha256": "a"}
    lines = []
    ensure_encoder(config, data, log=lines.append)
    ensure_encoder(config, data, log=lines.append)
    ensure_encoder(config, {"sha256": "b"}, log=lines.append)  # other records: another encoder
    assert [line.split(" ")[0] for line in lines if not line.startswith("Pretraining epoch")] == [
        "Pretraining", "Pretrained", "Pretraining"]
    changed = dataclasses.replace(PRETRAIN, lr=1e-3)
    ensure_encoder(config, {"sha256": "b"}, settings=changed, log=lines.append)
    assert lines[-1].startswith("Pretraining epoch")
    milder = dataclasses.replace(config, pretrain_min_crop=0.6)  # the run's crop setting is part of the key
    ensure_encoder(milder, {"sha256": "b"}, log=lines.append)
    assert lines[-1].startswith("Pretraining epoch")
    assert json.loads(RunDir(config.run_path).encoder_key.read_text())["key"]["settings"]["min_crop_area"] == 0.6
    hotter = dataclasses.replace(milder, pretrain_temperature=0.5)  # the loss's temperature is part of it too
    ensure_encoder(hotter, {"sha256": "b"}, log=lines.append)
    assert lines[-1].startswith("Pretraining epoch")
    assert json.loads(RunDir(config.run_path).encoder_key.read_text())["key"]["settings"]["temperature"] == 0.5
    assert run_settings(hotter).temperature == 0.5 and identity_mismatches(milder, hotter) == [
        "pretrain_temperature: 0.2 -> 0.5"]
    # input views keep the keys of encoders made before the option; model views are another encoder
    inputs, models = (dataclasses.replace(milder, pretrain_view_res=res) for res in ("input", "model"))
    assert "view_res" not in pretrain_key(inputs, {"sha256": "b"}, run_settings(inputs))["settings"]
    for made in (inputs, models, inputs):
        ensure_encoder(made, {"sha256": "b"}, log=lines.append)
        assert lines[-1].startswith("Pretraining epoch")
        assert json.loads(RunDir(config.run_path).encoder_key.read_text())["key"]["settings"].get(
            "view_res", "input") == made.pretrain_view_res


def test_a_run_pretrains_on_views_at_model_px(records, tmp_path):
    from bnp_cxr.cli.train import build_parser
    from bnp_cxr.training.arguments import training_options

    args = build_parser().parse_args(["--records", str(records), "--run-dir", str(tmp_path / "run"), "--size",
                                      str(SIZE), "--model-px", str(SIZE // 2), "--pretrain-view-res", "model",
                                      "--widths", "8", "16", "--epochs", "1", "--batch-size", "8", "--members", "1",
                                      "--pretrain-epochs", "2", "--no-evaluate"])
    result = train(make_config(training_options(args)), verbose=0, log=lambda _: None)
    run = RunDir(result.run_dir)
    assert json.loads(run.config.read_text())["pretrain_view_res"] == "model"
    assert json.loads(run.encoder_key.read_text())["key"]["settings"]["view_res"] == "model"
    keras.utils.set_random_seed(result.config.seed)  # the initialisation the pretraining started from
    start = build_model("small_cnn", SIZE, model_px=SIZE // 2, widths=(8, 16))
    encoder = load_model(run.encoder)
    assert encoder.input.shape[1:] == (SIZE, SIZE, 1)  # saved whole: the supervised model loads it by layer name
    for name in ("stem_conv", "block2_conv2"):  # the views trained the saved model's layers
        assert not np.allclose(encoder.get_layer(name).get_weights()[0], start.get_layer(name).get_weights()[0])


def test_pretraining_across_workers_is_refused(records, tmp_path):
    config = resolve(run_config(records, tmp_path / "run"), 0)[0]
    with pytest.raises(ValueError, match="runs on one machine, not 2 workers"):
        ensure_encoder(config, {"sha256": "a"}, workers=2)


def test_a_member_needs_its_ensemble_encoder(records, tmp_path):
    config = resolve(run_config(records, tmp_path / "run"), 0)[0]
    member = dataclasses.replace(config, run_dir=str(tmp_path / "run" / "members" / "member0"))
    with pytest.raises(FileNotFoundError, match="pretrained encoder .* not found"):
        ensure_encoder(member, {"sha256": "a"})
