"""Model-randomisation sanity check: layer groups, re-initialisation, map similarity, frames and plot."""

import keras
import numpy as np
import pandas as pd
import pytest
from archives import SMALL_CNN_SIZE as SIZE
from archives import png_records, write_run
from matplotlib.image import imread

from bnp_cxr.attribution.methods import MethodConfig
from bnp_cxr.attribution.sanity import (SANITY_COLUMNS, cascading_randomization, independent_randomization,
                                        map_similarity, plot_sanity, randomization_groups, reinitialize)
from bnp_cxr.models import build_model

CLI_SIZE = 64


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def blob_model():
    """A linear model whose weights are a smooth blob: its gradient map IS that blob."""
    image = keras.Input((16, 16, 1))
    x = keras.layers.Flatten()(image)
    model = keras.Model(image, keras.layers.Dense(2, name="head")(x))
    rows, cols = np.mgrid[:16, :16]
    blob = np.exp(-((rows - 5.0) ** 2 + (cols - 9.0) ** 2) / 18.0).reshape(-1, 1)
    model.get_layer("head").set_weights([np.hstack([blob, blob]).astype(np.float32), np.zeros(2, np.float32)])
    return model


def preactivation_model():
    """BN -> ReLU -> conv blocks (DenseNet's order): each BN normalises the output of the conv before it."""
    image = keras.Input((8, 8, 1))
    x = keras.layers.BatchNormalization(name="bn_input")(image)
    x = keras.layers.Conv2D(2, 3, name="conv1")(keras.layers.ReLU()(x))
    x = keras.layers.BatchNormalization(name="bn_conv1")(x)
    x = keras.layers.Conv2D(2, 3, name="conv2")(keras.layers.ReLU()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, keras.layers.Dense(2, name="head")(x))


def test_small_cnn_groups_run_head_first_each_conv_with_its_batchnorm(model):
    groups = randomization_groups(model)
    assert groups[0] == ("log10_bnp_bnpp", [model.get_layer("log10_bnp_bnpp")])
    names = [[layer.name for layer in layers] for _, layers in groups[1:]]
    assert all(len(group) == 2 and group[1] == group[0].replace("conv", "bn") for group in names)
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [group[0] for group in names] == convs[::-1]
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert sorted(name for group in names for name in group) == sorted(weighted - {"log10_bnp_bnpp"})


def test_preactivation_batchnorm_joins_the_conv_it_normalises():
    groups = randomization_groups(preactivation_model())
    assert [[layer.name for layer in layers] for _, layers in groups] == [
        ["head"], ["conv2"], ["conv1", "bn_conv1"], ["bn_input"]]


def test_reinitialize_redraws_kernels_resets_batchnorm_and_is_seeded(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    conv, bn = clone.get_layer("block2_conv1"), clone.get_layer("block2_bn1")
    bn.set_weights([w + 0.5 for w in bn.get_weights()])  # trained-like statistics, away from the initialisers
    reinitialize([conv, bn], seed=7)
    first = conv.get_weights()[0]
    assert not np.allclose(first, model.get_layer("block2_conv1").get_weights()[0])
    gamma, beta, mean, variance = bn.get_weights()
    assert np.all(gamma == 1) and np.all(beta == 0) and np.all(mean == 0) and np.all(variance == 1)
    reinitialize([conv, bn], seed=7)
    np.testing.assert_array_equal(conv.get_weights()[0], first)
    reinitialize([conv, bn], seed=8)
    assert not np.allclose(conv.get_weights()[0], first)
    np.testing.assert_array_equal(clone.get_layer("block3_conv1").get_weights()[0],
                                  model.get_layer("block3_conv1").get_weights()[0])


rng = np.random.default_rng(4)
SMOOTH = np.add.outer(np.arange(16.0), np.arange(16.0))
NOISE = rng.uniform(size=(16, 16))


@pytest.mark.parametrize("reference, other, rho, ssim", [
    (SMOOTH, SMOOTH, (1.0, 1.0), (1.0, 1.0)),
    (SMOOTH, -SMOOTH, (1.0, 1.0), (1.0, 1.0)),  # magnitudes are compared (Adebayo et al.'s absolute variant)
    (SMOOTH, SMOOTH ** 3, (1.0, 1.0), (0.2, 0.99)),  # ranks kept, structure bent
    (SMOOTH, rng.permutation(SMOOTH.ravel()).reshape(16, 16), (-0.3, 0.3), (-0.3, 0.3)),
    (NOISE, 1.0 - NOISE, (-1.0, -1.0), (-1.0, 0.0)),
])
def test_map_similarity_cases(reference, other, rho, ssim):
    found_rho, found_ssim = map_similarity(reference, other)
    assert rho[0] - 1e-9 <= found_rho <= rho[1] + 1e-9
    assert ssim[0] - 1e-9 <= found_ssim <= ssim[1] + 1e-9


def test_map_similarity_of_a_flat_map_has_no_rank_correlation():
    rho, ssim = map_similarity(np.zeros((16, 16)), SMOOTH)
    assert np.isnan(rho) and np.isfinite(ssim)
    with pytest.raises(ValueError, match="one shape"):
        map_similarity(np.zeros((16, 16)), np.zeros((8, 8)))


def test_cascading_frame_leaves_the_model_alone_and_is_reproducible(model, images):
    before = [w.copy() for w in model.get_weights()]
    frame = cascading_randomization(model, images, ("vanilla", "gradcam"), max_steps=3)
    assert list(frame.columns) == list(SANITY_COLUMNS)
    assert frame.groupby("method").step.apply(list).to_dict() == {"vanilla": [0, 1, 2, 3], "gradcam": [0, 1, 2, 3]}
    trained = frame[frame.step == 0]
    assert (trained.layer == "").all() and np.allclose(trained[["spearman", "ssim"]], 1.0)
    vanilla = frame[frame.method == "vanilla"]
    assert vanilla.n_layers_randomized.tolist() == [0, 1, 3, 5]
    assert vanilla.layer.tolist()[1:] == ["log10_bnp_bnpp", "block4_conv2+block4_bn2", "block4_conv1+block4_bn1"]
    for kept, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(kept, now)
    again = cascading_randomization(model, images, ("vanilla", "gradcam"), max_steps=3)
    np.testing.assert_allclose(again[["spearman", "ssim"]], frame[["spearman", "ssim"]], equal_nan=True)
    assert frame.iloc[-1].spearman < 0.9  # three random layers later the maps have changed


def test_randomising_the_head_of_a_linear_model_destroys_its_gradient_map(blob_model):
    images = np.random.default_rng(5).uniform(size=(3, 16, 16, 1)).astype(np.float32)
    frame = cascading_randomization(blob_model, images, ("vanilla",))
    assert frame.step.tolist() == [0, 1] and frame.layer.tolist() == ["", "head"]
    randomised = frame.iloc[1]
    # Glorot-uniform weights against a smooth blob: ranks and structure both gone; one map per image, all alike.
    assert abs(randomised.spearman) < 0.3 and randomised.ssim < 0.3 and randomised.spearman_std < 1e-6
    assert randomised.n_images == 3


def test_independent_randomization_randomises_one_group_per_step(model, images):
    frame = independent_randomization(model, images, ("vanilla",), max_steps=3, config=MethodConfig(batch_size=1))
    assert frame.n_layers_randomized.tolist() == [0, 1, 2, 2]
    cascading = cascading_randomization(model, images, ("vanilla",), max_steps=2)
    # Step 1 is the same randomisation in both modes (the head alone, from the same seed).
    np.testing.assert_allclose(frame.iloc[1][["spearman", "ssim"]].astype(float),
                               cascading.iloc[1][["spearman", "ssim"]].astype(float))


def test_cascading_runs_xrai(model, images):
    frame = cascading_randomization(model, images, ("xrai",), max_steps=1, config=MethodConfig(ig_steps=4))
    assert frame.step.tolist() == [0, 1] and np.isfinite(frame.ssim).all() and frame.ssim.iloc[0] == pytest.approx(1)


@pytest.mark.parametrize("methods, max_steps, message", [
    (("vanilla", "lime"), None, "distinct names"),
    ((), None, "distinct names"),
    (("vanilla", "vanilla"), None, "distinct names"),
    (("vanilla",), -1, "max_steps"),
])
def test_errors(model, images, methods, max_steps, message):
    with pytest.raises(ValueError, match=message):
        cascading_randomization(model, images, methods, max_steps=max_steps)


def test_plot_sanity_writes_a_png(tmp_path, model, images):
    frame = cascading_randomization(model, images, ("vanilla", "gradcam"), max_steps=2)
    path = plot_sanity(frame, tmp_path / "plots" / "sanity.png", title="small_cnn 32 px")
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0
    with pytest.raises(ValueError, match="missing columns"):
        plot_sanity(frame.drop(columns="ssim"), tmp_path / "bad.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder (small_cnn at 64 px, the records' smallest size; untrained) with 5 test and 1 training images."""
    rng = np.random.default_rng(6)
    entries = ((f"im{i}.png", rng.integers(2000, 60000, (128, 128)).astype(np.uint16),
                f"P{i:03d},im{i}.png,2021-03-0{i + 1},{50 + 40 * i},{200 + 150 * i},PA,{split}")
               for i, split in enumerate(["test"] * 5 + ["train"]))
    records = tmp_path_factory.mktemp("records")
    png_records(tmp_path_factory.mktemp("archive"), records, "patient_id,image_path,study_datetime,bnp,bnpp,view,split",
                entries, (CLI_SIZE,))
    keras.utils.set_random_seed(3)
    return write_run(tmp_path_factory.mktemp("runs") / "size64", build_model("small_cnn", CLI_SIZE), CLI_SIZE,
                         records, backbone="small_cnn")


def load_cli():
    from bnp_cxr.cli import sanity_check

    return sanity_check


def test_cli_writes_csv_and_plot_per_run(run_dir, tmp_path, capsys):
    cli = load_cli()
    argv = ["--runs-root", str(run_dir.parent), "--n", "3", "--methods", "vanilla", "gradcam", "--max-steps", "2",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    frame = pd.read_csv(tmp_path / "size64" / "sanity.csv")
    assert frame.method.tolist() == ["vanilla"] * 3 + ["gradcam"] * 3
    assert (frame.n_images[frame.method == "vanilla"] == 3).all()
    assert (tmp_path / "size64" / "sanity.png").is_file()
    assert "log10_bnp_bnpp" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--runs-root", "{empty}"], "no run folder"),
    (["--run", "{empty}"], "config.json"),
    (["--run", "{run}", "--n", "0"], "--n must be"),
])
def test_cli_errors_are_one_line(run_dir, tmp_path, capsys, argv, message):
    argv = [arg.format(empty=tmp_path, run=run_dir) for arg in argv] + ["--methods", "vanilla", "--out", str(tmp_path)]
    assert load_cli().main(argv) == 2
    assert message in capsys.readouterr().err
