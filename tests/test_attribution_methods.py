"""Attribution maps: vanilla gradients (+ SmoothGrad), Grad-CAM and XRAI against hand computations."""

import keras
import numpy as np
import pytest
import saliency.core as saliency
import tensorflow as tf
from archives import SMALL_CNN_SIZE as SIZE
from skimage.transform import resize

from bnp_cxr.attribution.callbacks import ModelGradients
from bnp_cxr.attribution.methods import MethodConfig, attribution_maps
from bnp_cxr.models import build_model, last_conv_layer_name


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(size=(3, SIZE, SIZE, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def left_half_model():
    """A model whose outputs depend on the left half of the image only (the right half is cropped away)."""
    keras.utils.set_random_seed(2)
    image = keras.Input((16, 16, 1))
    x = keras.layers.Cropping2D(((0, 0), (0, 8)))(image)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, keras.layers.Dense(2)(x))


def hand_gradients(model, images, index):
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = model(x, training=False)[:, index]
    return tape.gradient(output, x).numpy()


@pytest.mark.parametrize("target, index, batch_size", [("bnpp", 1, 32), ("bnp", 0, 2), ("bnpp", 1, 1)])
def test_vanilla_is_the_absolute_gradient(model, images, target, index, batch_size):
    maps = attribution_maps(model, images, "vanilla", target=target, config=MethodConfig(batch_size=batch_size))
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, np.abs(hand_gradients(model, images, index))[..., 0], rtol=1e-5, atol=1e-8)


def test_batched_vanilla_equals_the_library(model, images):
    """The batched shortcut must give what saliency's GradientSaliency.GetMask gives image by image."""
    callback = ModelGradients(model, "bnpp").call_model_function
    library = np.stack([np.abs(saliency.GradientSaliency().GetMask(image, callback))[..., 0] for image in images])
    np.testing.assert_allclose(attribution_maps(model, images, "vanilla", config=MethodConfig(batch_size=2)),
                               library, rtol=1e-5, atol=1e-8)


def test_smoothgrad_without_noise_is_vanilla(model, images):
    config = MethodConfig(smoothgrad=True, smoothgrad_stdev_spread=0.0, smoothgrad_samples=3)
    np.testing.assert_allclose(attribution_maps(model, images, "vanilla", config=config),
                               attribution_maps(model, images, "vanilla"), rtol=1e-5, atol=1e-8)


def test_smoothgrad_is_seeded_per_image_and_leaves_numpy_state_alone(model, images):
    config = MethodConfig(smoothgrad=True, smoothgrad_samples=4)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = attribution_maps(model, images, "vanilla", config=config)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(attribution_maps(model, images[1:], "vanilla", config=config), first[1:])
    other_seed = attribution_maps(model, images, "vanilla", config=MethodConfig(smoothgrad=True, smoothgrad_samples=4,
                                                                                seed=1))
    assert not np.allclose(other_seed, first)
    assert not np.allclose(first, attribution_maps(model, images, "vanilla"))


@pytest.mark.parametrize("smoothgrad", [False, True])
def test_planted_signal_vanilla_is_zero_outside_the_region(left_half_model, smoothgrad):
    images = np.random.default_rng(3).uniform(size=(4, 16, 16, 1)).astype(np.float32)
    maps = attribution_maps(left_half_model, images, "vanilla", config=MethodConfig(smoothgrad=smoothgrad,
                                                                                    smoothgrad_samples=5))
    assert np.all(maps[:, :, 8:] == 0.0)
    assert np.mean(maps[:, :, :8] > 0) > 0.9


def hand_gradcam(model, image, index, layer_name):
    layer = model.get_layer(layer_name)
    probe = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    with tf.GradientTape() as tape:
        conv, output = probe(tf.convert_to_tensor(image[None]), training=False)
        selected = output[:, index]
    conv_grads = tape.gradient(selected, conv).numpy()[0]
    weights = conv_grads.mean(axis=(0, 1))  # global-average-pooled gradients (Selvaraju et al. 2017)
    cam = np.maximum(np.tensordot(conv.numpy()[0], weights, axes=([2], [0])), 0.0)
    if cam.max() > 0:
        cam = cam / cam.max()
    return resize(cam, image.shape[:2])


@pytest.mark.parametrize("target, index, layer", [("bnpp", 1, None), ("bnp", 0, "block3_relu2")])
def test_gradcam_matches_a_hand_gradcam(model, images, target, index, layer):
    maps = attribution_maps(model, images, "gradcam", target=target, config=MethodConfig(conv_layer=layer))
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    expected = np.stack([hand_gradcam(model, image, index, layer or last_conv_layer_name(model)) for image in images])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)
    assert np.isclose(maps.max(), 1.0, atol=0.05)  # normalised by its max before (bilinear) upsampling


def test_reused_gradients_give_the_same_maps(model, images):
    gradients = ModelGradients(model, "bnpp")
    for method in ("vanilla", "gradcam"):
        np.testing.assert_allclose(attribution_maps(model, images, method, gradients=gradients),
                                   attribution_maps(model, images, method), rtol=1e-5, atol=1e-8)


def test_xrai_branch_delegates_to_xrai_map(model, images):
    from bnp_cxr.attribution.xrai import xrai_map

    maps = attribution_maps(model, images[:2], "xrai", target="bnp", config=MethodConfig(ig_steps=4, batch_size=8))
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32 and np.isfinite(maps).all()
    direct = xrai_map(model, images[1], target="bnp", impl="fast", batch_size=8, steps=4).attribution
    np.testing.assert_allclose(maps[1], direct, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("change, message", [
    (dict(method="shap"), "unknown method"),
    (dict(target="troponin"), "unknown target"),
    (dict(images=np.zeros((SIZE, SIZE, 1), np.float32)), r"\[N, H, W, 1\]"),
    (dict(images=np.zeros((1, SIZE, SIZE, 3), np.float32)), r"\[N, H, W, 1\]"),
    (dict(images=np.zeros((0, SIZE, SIZE, 1), np.float32)), "non-empty"),
    (dict(images=np.zeros((1, 16, 16, 1), np.float32)), "model takes 32 x 32"),
    (dict(images=np.full((1, SIZE, SIZE, 1), 255.0, np.float32)), r"in \[0, 1\]"),
    (dict(images=np.full((1, SIZE, SIZE, 1), -0.1, np.float32)), r"in \[0, 1\]"),
    (dict(images=np.full((1, SIZE, SIZE, 1), np.nan, np.float32)), "NaN"),
    (dict(gradients="other model"), "another model"),
    (dict(gradients="bnp"), "explain target 'bnp'"),
    (dict(config=MethodConfig(conv_layer="block3_relu2")), "config names 'block3_relu2'"),
])
def test_errors(model, change, message):
    kwargs = dict(images=np.zeros((1, SIZE, SIZE, 1), np.float32), method="vanilla", target="bnpp",
                  config=MethodConfig(), gradients=ModelGradients(model, "bnpp"))
    kwargs.update(change)
    if kwargs["gradients"] == "other model":
        kwargs["gradients"] = ModelGradients(build_model("small_cnn", SIZE), "bnpp")
    elif kwargs["gradients"] == "bnp":
        kwargs["gradients"] = ModelGradients(model, "bnp")
    with pytest.raises(ValueError, match=message):
        attribution_maps(model, kwargs.pop("images"), kwargs.pop("method"), **kwargs)


@pytest.mark.parametrize("fields, message", [
    (dict(xrai_impl="slow"), "xrai_impl"),
    (dict(batch_size=0), "batch_size"),
    (dict(smoothgrad_samples=0), "smoothgrad_samples"),
    (dict(smoothgrad_stdev_spread=-0.1), "smoothgrad_stdev_spread"),
    (dict(ig_steps=0), "ig_steps"),
])
def test_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        MethodConfig(**fields)

