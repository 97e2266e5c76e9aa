"""Models: flat graphs with addressable conv layers, grayscale stems, ImageNet path, weight files, loading."""

import keras
import numpy as np
import pytest

from bnp_cxr import models
from bnp_cxr.models import (BACKBONES, DOWNSAMPLE_NAME, IMAGENET_STEMS, OUTPUT_NAME, STEM_NAME, GrayscaleStem,
                            WeightsDownloadError, build_model, ensemble_model, last_conv_layer_name, load_model)

SIZE = 64


@pytest.fixture
def images():
    return np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype("float32")


@pytest.fixture
def float32_policy():
    """Leave the global dtype policy as it was, whatever a test sets."""
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("backbone, last_conv", [
    ("resnet152", "conv5_block3_out"),
    ("resnet50", "conv5_block3_out"),
    ("densenet121", "relu"),
    ("efficientnetv2s", "top_activation"),
    ("small_cnn", "features"),
])
def test_every_backbone_is_one_flat_graph_with_an_addressable_last_conv(backbone, last_conv, images):
    model = build_model(backbone, SIZE)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested sub-model
    assert model.input_shape == (None, SIZE, SIZE, 1) and model.output_shape == (None, 2)
    assert model.get_layer(STEM_NAME).output.shape[-1] == 1  # from scratch: a 1-channel stem
    assert last_conv_layer_name(model) == last_conv
    grad_model = keras.Model(model.inputs, [model.get_layer(last_conv).output, model.output])
    features, outputs = grad_model(images)
    assert len(features.shape) == 4 and features.shape[1] == features.shape[2] >= 2
    assert outputs.dtype == "float32"
    np.testing.assert_allclose(outputs, model(images), rtol=1e-5, atol=1e-6)


def test_mixed_precision_keeps_float32_outputs(float32_policy, images):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_model("small_cnn", SIZE)
    features = model.get_layer(last_conv_layer_name(model)).output
    assert features.dtype == "float16" and model.get_layer(OUTPUT_NAME).output.dtype == "float32"
    assert model(images).dtype == "float32"


@pytest.mark.parametrize("backbone, reference", [
    ("resnet50", keras.applications.resnet.preprocess_input),  # caffe: BGR, mean subtraction on 0..255
    ("densenet121", keras.applications.densenet.preprocess_input),  # torch: 0..1, mean / std
    ("efficientnetv2s", keras.applications.efficientnet_v2.preprocess_input),  # 0..255 pass-through
])
def test_imagenet_stem_equals_the_backbones_own_preprocessing(backbone, reference, images):
    stem = GrayscaleStem(*IMAGENET_STEMS[BACKBONES[backbone].imagenet_stem])
    rgb_255 = np.repeat(images * 255.0, 3, axis=-1)
    np.testing.assert_allclose(stem(images), reference(rgb_255.copy()), rtol=1e-5, atol=1e-4)


@pytest.fixture
def fake_download(monkeypatch, tmp_path):
    """keras' get_file serving a legacy .h5 of a 3-channel DenseNet121 (what the ImageNet download provides)."""
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    import h5py

    source = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "densenet121_notop.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
    return source


def test_imagenet_weights_load_and_preprocessing_runs_in_the_graph(fake_download, images):
    model = build_model("densenet121", SIZE, weights="imagenet")
    assert model.get_layer(STEM_NAME).output.shape[-1] == 3
    features = keras.Model(model.inputs, model.get_layer(last_conv_layer_name(model)).output)(images)
    # Users feed [0, 1] grayscale; the graph must equal the reference pipeline on 0..255 RGB.
    rgb = keras.applications.densenet.preprocess_input(np.repeat(images * 255.0, 3, axis=-1))
    np.testing.assert_allclose(features, fake_download(rgb, training=False), rtol=1e-4, atol=1e-4)


def test_failed_imagenet_download_says_so(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):  # what keras raises when the host cannot be reached
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsDownloadError, match="could not download the ImageNet weights of resnet50"):
        build_model("resnet50", SIZE, weights="imagenet")


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_weights_file_restores_a_scratch_model(tmp_path, suffix, images):
    trained = build_model("small_cnn", SIZE)
    trained.get_layer(OUTPUT_NAME).bias.assign([1.5, 2.5])  # differ from a fresh initialisation
    path = tmp_path / f"run{suffix}"
    trained.save_weights(path) if suffix == ".weights.h5" else trained.save(path)
    restored = build_model("small_cnn", SIZE, weights=str(path))
    np.testing.assert_allclose(restored(images), trained(images), rtol=1e-6)


def test_weights_file_of_an_imagenet_run_gets_the_three_channel_stem(fake_download, tmp_path, images):
    trained = build_model("densenet121", SIZE, weights="imagenet")
    trained.save_weights(tmp_path / "run.weights.h5")
    restored = build_model("densenet121", SIZE, weights=str(tmp_path / "run.weights.h5"))
    assert restored.get_layer(STEM_NAME).scale == trained.get_layer(STEM_NAME).scale
    np.testing.assert_allclose(restored(images), trained(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone, weights, kwargs, error, match", [
    ("vgg16", None, {}, ValueError, "unknown backbone"),
    ("small_cnn", "imagenet", {}, ValueError, "no ImageNet weights"),
    ("small_cnn", None, {"dropout": 1.0}, ValueError, "dropout"),
    ("small_cnn", "missing.weights.h5", {}, FileNotFoundError, "not found"),
    ("small_cnn", "weights.pt", {}, ValueError, "must end with"),
    ("small_cnn", None, {"model_px": 48}, ValueError, "model_px must divide the image size: 64 px"),
    ("resnet50", None, {"widths": (8, 16)}, ValueError, "resnet50 takes no widths"),
    ("small_cnn", None, {"widths": ()}, ValueError, "widths must be one or more positive"),
    ("small_cnn", None, {"widths": (8, 0)}, ValueError, "widths must be one or more positive"),
])
def test_bad_arguments_are_rejected(backbone, weights, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_model(backbone, SIZE, weights=weights, **kwargs)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_weights_file_of_another_architecture_is_rejected(tmp_path, suffix):
    other = build_model("small_cnn", 2 * SIZE)
    path = tmp_path / f"other{suffix}"
    other.save_weights(path) if suffix == ".weights.h5" else other.save(path)
    # .weights.h5: the first conv of each (structure key conv2d); .keras: the output layer, the only shared name.
    layer, found, expected = {".weights.h5": ("conv1_conv", r"\(5, 5, 1, 16\)", r"\(7, 7, 1, 64\)"),
                              ".keras": (OUTPUT_NAME, r"\(160, 2\)", r"\(2048, 2\)")}[suffix]
    with pytest.raises(ValueError, match=f"does not fit a resnet50 model.*layer '{layer}'.*{found}.*{expected}"):
        build_model("resnet50", SIZE, weights=str(path))


def encoder(kernel: int = 5) -> keras.Model:
    """small_cnn's stem and first block under its layer names (in its layer order), random non-initial weights."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(16, kernel, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", use_bias=False, name="block1_conv1")(x)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="block1_bn1")(x))
    rng = np.random.default_rng(7)
    model.set_weights([rng.random(weight.shape).astype("float32") + 0.5 for weight in model.get_weights()])
    return model


def save(model: keras.Model, path) -> str:
    model.save_weights(path) if str(path).endswith(".weights.h5") else model.save(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_partial_checkpoint_loads_the_layers_it_matches(tmp_path, suffix, images):
    source = encoder()
    messages = []
    model = build_model("small_cnn", SIZE, weights=save(source, tmp_path / f"encoder{suffix}"), log=messages.append)
    for layer in source.layers[1:]:
        for loaded, saved in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(loaded, saved)
    np.testing.assert_array_equal(model.get_layer("block2_bn1").gamma, 1.0)  # left at its initialisation
    assert len(messages) == 1 and "loaded 4 of 17 layers with weights" in messages[0]
    assert "left at their initialisation: block2_conv1" in messages[0]
    assert np.isfinite(model(images)).all()


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_checkpoint_layer_of_another_shape_is_named(tmp_path, suffix):
    path = save(encoder(kernel=3), tmp_path / f"encoder{suffix}")
    with pytest.raises(ValueError, match=r"layer 'stem_conv'.*checkpoint shapes \[\(3, 3, 1, 16\)\], "
                                         r"model shapes \[\(5, 5, 1, 16\)\]"):
        build_model("small_cnn", SIZE, weights=path)


def test_a_checkpoint_without_a_matching_layer_is_rejected(tmp_path):
    inputs = keras.Input((4,))
    path = save(keras.Model(inputs, keras.layers.Dense(2, name="elsewhere")(inputs)), tmp_path / "other.keras")
    with pytest.raises(ValueError, match="no layer matches by layer name.*elsewhere"):
        build_model("small_cnn", SIZE, weights=path)


@pytest.mark.parametrize("backbone", ["small_cnn", "densenet121"])
def test_structure_keys_are_the_keys_keras_saves_layers_under(tmp_path, backbone):
    import h5py

    model = build_model(backbone, SIZE)
    model.save_weights(tmp_path / "model.weights.h5")
    with h5py.File(tmp_path / "model.weights.h5", "r") as handle:
        saved = {key: [item["vars"][str(i)].shape for i in range(len(item["vars"]))]
                 for key, item in handle["layers"].items() if "vars" in item and len(item["vars"])}
    keys = models.structure_keys([type(layer).__name__ for layer in model.layers])
    ours = {key: [tuple(weight.shape) for weight in layer.weights] for key, layer in zip(keys, model.layers)
            if layer.weights}
    assert ours == saved


@pytest.mark.parametrize("model_px, factor", [(32, 2), (16, 4), (64, 1), (128, 1), (None, 1)])
def test_model_px_reads_the_image_area_averaged_by_a_whole_factor(tmp_path, images, model_px, factor):
    model = build_model("small_cnn", SIZE, model_px=model_px)
    assert (DOWNSAMPLE_NAME in [layer.name for layer in model.layers]) == (factor > 1)
    reads = SIZE // factor
    reference = build_model("small_cnn", reads)  # the same network on images made at the smaller size
    for layer in reference.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    averaged = images.reshape(len(images), reads, factor, reads, factor, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(model(images), reference(averaged), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "model.keras")  # a saved model keeps reading at model_px; so does an ensemble of them
    np.testing.assert_allclose(load_model(tmp_path / "model.keras")(images), model(images), rtol=1e-6)
    other = build_model("small_cnn", SIZE, model_px=model_px)
    np.testing.assert_allclose(ensemble_model([model, other])(images), (model(images) + other(images)) / 2,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("widths, channels, pools", [(None, 160, 3), ((8, 16), 16, 1), ((8, 16, 24, 32, 40), 40, 4)])
def test_small_cnn_widths_set_its_blocks(widths, channels, pools):
    model = build_model("small_cnn", SIZE, widths=widths)
    assert model.get_layer("features").output.shape[-1] == channels
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == pools


def test_load_model_round_trip(tmp_path, images):
    model = build_model("small_cnn", SIZE)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert isinstance(loaded.get_layer(STEM_NAME), GrayscaleStem)
    np.testing.assert_allclose(loaded(images), model(images), rtol=1e-6)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.keras")


def test_last_conv_layer_name_falls_back_to_the_last_spatial_layer():
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv_b")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    assert models.last_conv_layer_name(keras.Model(inputs, outputs)) == "conv_b"
