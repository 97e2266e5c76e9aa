"""Ensembles: the averaged flat model, member runs, resume rules, the CLI and Grad-CAM on an ensemble."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import saliency.core as saliency

from archives import heart_records
from bnp_cxr.attribution.callbacks import ModelGradients
from bnp_cxr.models import (ENSEMBLE_FEATURES, OUTPUT_NAME, POOL_NAME, build_model, ensemble_model,
                            last_conv_layer_name, load_model, member_prefix)
from bnp_cxr.training import make_config, resolve, train
from bnp_cxr.training.config import CPU_MEMBERS
from bnp_cxr.training.ensemble import member_config
from bnp_cxr.training.loop import data_fingerprint
from bnp_cxr.training.pretrain import ensure_encoder
from bnp_cxr.workspace import RunDir

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def seeded_model(seed: int, size: int = SIZE) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_model("small_cnn", size)
    model.get_layer(OUTPUT_NAME).bias.assign([seed + 0.5, -seed])  # members differ in their heads too
    return model


@pytest.fixture(scope="module")
def members():
    return [seeded_model(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, SIZE, SIZE, 1), dtype=np.float32)


def mean_prediction(models, images) -> np.ndarray:
    return np.mean([model.predict(images, verbose=0) for model in models], axis=0)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_ensemble_output_is_the_members_mean(members, images, count):
    ensemble = ensemble_model(members[:count])
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), mean_prediction(members[:count], images),
                               atol=1e-5)
    assert not any(isinstance(layer, keras.Model) for layer in ensemble.layers)  # flat, as every model
    assert {member_prefix(k) + "stem_conv" for k in range(count)} <= {layer.name for layer in ensemble.layers}


def test_ensemble_survives_save_and_load(members, images, tmp_path):
    path = tmp_path / "ensemble.keras"
    ensemble_model(members).save(path)
    np.testing.assert_allclose(load_model(path).predict(images, verbose=0), mean_prediction(members, images),
                               atol=1e-5)


def test_grad_cam_reads_every_member_at_once(members, images):
    ensemble = ensemble_model(members)
    assert last_conv_layer_name(ensemble) == ENSEMBLE_FEATURES
    single_channels = members[0].get_layer(POOL_NAME).input.shape[-1]
    assert ensemble.get_layer(ENSEMBLE_FEATURES).output.shape[-1] == 3 * single_channels
    keys = (saliency.CONVOLUTION_LAYER_VALUES, saliency.CONVOLUTION_OUTPUT_GRADIENTS)

    def grad_cam_before_relu(model):  # Grad-CAM (Selvaraju et al. 2017): channels weighted by mean gradient
        result = ModelGradients(model, "bnpp").call_model_function(images, expected_keys=keys)
        weights = result[keys[1]].mean(axis=(1, 2), keepdims=True)
        return (weights * result[keys[0]]).sum(axis=-1)

    # d(mean)/d(member k's features) = member k's own gradient / 3: the ensemble's map is the members' mean.
    np.testing.assert_allclose(grad_cam_before_relu(ensemble),
                               np.mean([grad_cam_before_relu(member) for member in members], axis=0),
                               rtol=1e-4, atol=1e-6)
    mask = saliency.GradCam().GetMask(images[0], ModelGradients(ensemble, "bnpp").call_model_function,
                                      should_resize=True)
    assert mask.shape[:2] == (SIZE, SIZE) and np.isfinite(mask).all()


@pytest.mark.parametrize("make_members, message", [
    (lambda: [], "at least one member"),
    (lambda: [seeded_model(0, 32), seeded_model(1, 64)], "differ in input shape"),
    (lambda: [keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])],
     "member 0 .* is not a bnp_cxr model"),
])
def test_ensemble_of_unfit_members_is_refused(make_members, message):
    with pytest.raises(ValueError, match=message):
        ensemble_model(make_members())


def test_an_ensemble_is_no_weights_file_for_one_model(members, tmp_path):
    path = tmp_path / "ensemble.keras"
    ensemble_model(members).save(path)
    with pytest.raises(ValueError, match=f"does not fit a small_cnn model.*'{OUTPUT_NAME}'"):
        build_model("small_cnn", SIZE, weights=str(path))


@pytest.mark.parametrize("options, gpus, expected", [
    ({}, 0, CPU_MEMBERS),
    ({"backbone": "small_cnn"}, 0, CPU_MEMBERS),
    ({}, 1, 1),  # the paper's ResNet152 on a GPU: one model
    ({"backbone": "resnet50"}, 0, 1),
    ({"members": 2}, 1, 2),
    ({"members": 1}, 0, 1),
])
def test_members_resolve_by_recipe(options, gpus, expected):
    config, notes = resolve(make_config(options), gpus)
    assert config.members == expected
    told = f"{expected} models averaged" if expected > 1 else "One model (as the paper"
    assert any(note.startswith(told) for note in notes) == ("members" not in options)


def test_member_configs_differ_by_seed_and_folder(tmp_path):
    config = make_config({"run_dir": str(tmp_path / "run"), "members": 3, "seed": 7})
    seeds = [member_config(config, k).seed for k in range(3)]
    assert seeds == [7, 8, 9]
    assert member_config(config, 2).run_dir == str(tmp_path / "run" / "members" / "member2")
    assert {member_config(config, k).members for k in range(3)} == {1}


def test_members_below_one_are_refused():
    with pytest.raises(ValueError, match="members must be >= 1"):
        make_config({"members": 0})


# ---------------------------------------------------------------- training an ensemble end to end

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"),
                         {"train": 16, "val": 4, "test": 4}, (64,), severities=lambda rng, count: rng.random(count),
                         seed=2, bnp_on=lambda index: index % 3 == 0, bnpp_on=lambda index: index % 3 != 0)


def ensemble_config(records, run_dir, resume=False, **options):
    base = {"records_dir": str(records), "size": 64, "backbone": "small_cnn", "epochs": 1, "batch_size": 8,
            "run_dir": str(run_dir), "shuffle_buffer": 32, "members": 2, "seed": 3}
    return make_config({**base, **options}, resume=resume)


@pytest.fixture(scope="module")
def ensemble_run(records, tmp_path_factory):
    return train(ensemble_config(records, tmp_path_factory.mktemp("runs") / "ens"), verbose=0,
                 log=lambda _: None)


def test_ensemble_run_holds_members_and_their_mean(ensemble_run, records):
    from bnp_cxr.records.reader import make_dataset

    run = RunDir(ensemble_run.run_dir)
    assert ensemble_run.epochs_completed == 1 and run.is_trained()
    config = json.loads(run.config.read_text())
    assert config["members"] == 2 and config["member_runs"] == ["members/member0", "members/member1"]
    assert config["data"]["images"]["train"] == 16
    member_configs = [json.loads(run.member(k).config.read_text()) for k in range(2)]
    assert [member["seed"] for member in member_configs] == [3, 4]
    assert all(member["members"] == 1 and run.member(k).is_trained() for k, member in enumerate(member_configs))
    images = np.concatenate([batch[0].numpy() for batch in make_dataset(records, "test", 64, standardize="clahe")])
    member_models = [load_model(run.member(k).model) for k in range(2)]
    ensemble = load_model(run.model)
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), mean_prediction(member_models, images),
                               atol=1e-5)
    # two seeds, two different models: averaging them is not a no-op
    assert not np.allclose(member_models[0].predict(images, verbose=0), member_models[1].predict(images, verbose=0))


def test_resume_of_a_finished_ensemble_trains_nothing(ensemble_run, records):
    before = RunDir(ensemble_run.run_dir).model.stat().st_mtime_ns
    lines = []
    result = train(ensemble_config(records, ensemble_run.run_dir, resume=True), verbose=0, log=lines.append)
    assert result.epochs_completed == 1
    assert sum("nothing to train" in line for line in lines) == 2
    assert RunDir(result.run_dir).model.stat().st_mtime_ns >= before
    config = json.loads(RunDir(result.run_dir).config.read_text())
    assert [session["resumed"] for session in config["sessions"]] == [False, True]  # one entry per session
    assert config["member_runs"] == ["members/member0", "members/member1"]


@pytest.mark.parametrize("options, error, message", [
    ({}, FileExistsError, "already exists and is not empty"),
    ({"resume": True, "members": 3}, ValueError, "members: 2 -> 3"),
])
def test_ensemble_folder_reuse_is_refused(ensemble_run, records, options, error, message):
    with pytest.raises(error, match=message):
        train(ensemble_config(records, ensemble_run.run_dir, **options), verbose=0, log=lambda _: None)


def test_interrupted_ensemble_resumes_its_missing_member(records, tmp_path):
    run_dir = tmp_path / "ens"
    config = ensemble_config(records, run_dir)
    # as if stopped after the pretraining and the first member
    resolved = resolve(config, 0)[0]
    ensure_encoder(resolved, data_fingerprint(records, 64), log=lambda _: None)
    train(member_config(resolved, 0), verbose=0, log=lambda _: None)
    with pytest.raises(FileExistsError):
        train(config, verbose=0, log=lambda _: None)
    lines = []
    result = train(ensemble_config(records, run_dir, resume=True), verbose=0, log=lines.append)
    assert result.epochs_completed == 1 and RunDir(run_dir).is_trained()
    assert sum("nothing to train" in line for line in lines) == 1  # member 0 was done, member 1 trained
    assert any(line.startswith("Pretrained encoder reused") for line in lines)


def test_cli_trains_and_evaluates_an_ensemble(records, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--records", str(records),
                              "--size", "64", "--epochs", "1", "--batch-size", "8", "--members", "2",
                              "--run-dir", str(run_dir), "--verbose", "0", "--n-boot", "1000"],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    assert "model (mean of 2 members, each at its last epoch)" in process.stdout
    assert RunDir(run_dir).metrics.is_file() and RunDir(run_dir).predictions.is_file()
    assert "Ensemble of 2 `small_cnn` models" in (run_dir / "report.md").read_text()
