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



def library_call(method, image, callback):
    """The saliency library's own call for a LIBRARY_METHODS method (batch 1, its defaults but for the steps)."""
    black = np.zeros_like(image)
    if method == "ig":
        return saliency.IntegratedGradients().GetMask(image, callback, x_baseline=black, x_steps=6)
    if method == "blur_ig":
        return saliency.BlurIG().GetMask(image, callback, steps=6)
    return saliency.GuidedIG().GetMask(image, callback, x_baseline=black, x_steps=6)


@pytest.mark.parametrize("method", ["ig", "blur_ig", "guided_ig"])
def test_path_methods_equal_the_library_call(model, images, method, monkeypatch):
    from bnp_cxr.attribution import library_methods

    gradients = ModelGradients(model, "bnpp")
    # Fewer steps than the defaults keep the test fast; the wrapper passes them through unchanged.
    real = {"ig": saliency.IntegratedGradients.GetMask, "blur_ig": saliency.BlurIG.GetMask,
            "guided_ig": saliency.GuidedIG.GetMask}[method]
    owner = {"ig": saliency.IntegratedGradients, "blur_ig": saliency.BlurIG, "guided_ig": saliency.GuidedIG}[method]
    steps_key = {"ig": "x_steps", "blur_ig": "steps", "guided_ig": "x_steps"}[method]
    monkeypatch.setattr(owner, "GetMask", lambda self, *a, **k: real(self, *a, **{**k, steps_key: 6}))
    maps = library_methods.library_maps(method, images[:2], gradients, ig_steps=6, batch_size=4)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32 and np.isfinite(maps).all()
    with library_methods.numpy_quantile_compat():
        expected = np.stack([library_call(method, image, gradients.call_model_function)[..., 0]
                             for image in images[:2]])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)


def test_guided_ig_shim_is_scoped_and_needed_on_this_numpy(model, images):
    from saliency.core import guided_ig

    from bnp_cxr.attribution.library_methods import numpy_quantile_compat

    with numpy_quantile_compat():
        assert guided_ig.np.quantile(np.arange(10.0), 0.25, interpolation="lower") == 2.0
    assert guided_ig.np is np  # restored: nothing outside the library call sees the shim
    callback = ModelGradients(model, "bnpp").call_model_function
    removed = tuple(int(part) for part in np.__version__.split(".")[:2]) >= (2, 4)
    if removed:  # the library's own call fails on this numpy without the shim
        with pytest.raises(TypeError, match="interpolation"):
            saliency.GuidedIG().GetMask(images[0], callback, x_steps=2)


def test_guided_ig_is_nearly_complete(model, images):
    """Guided IG integrates along a path from black: its sum is about f(x) - f(black) (completeness)."""
    from bnp_cxr.attribution.library_methods import library_map

    gradients = ModelGradients(model, "bnpp")
    image = images[0]
    attribution = library_map("guided_ig", image, gradients)
    outputs = model(np.stack([image, np.zeros_like(image)]), training=False).numpy()[:, 1]
    assert attribution.sum() == pytest.approx(outputs[0] - outputs[1], rel=0.05, abs=1e-3)


@pytest.mark.parametrize("window", [3, 8])
def test_batched_occlusion_at_stride_one_equals_the_library(left_half_model, window):
    from bnp_cxr.attribution.library_methods import occlusion_map

    image = np.random.default_rng(4).uniform(size=(16, 16, 1)).astype(np.float32)
    gradients = ModelGradients(left_half_model, "bnpp")
    library = saliency.Occlusion().GetMask(image, gradients.call_model_function, size=window)[..., 0]
    ours = occlusion_map(gradients, image, window, 1, batch_size=7)
    np.testing.assert_allclose(ours, library, rtol=1e-5, atol=1e-6)
    # Windows wholly in the cropped-away half change nothing (up to float32 batch noise).
    np.testing.assert_allclose(ours[:, 8 + window - 1:], 0.0, atol=1e-6)
    assert np.abs(ours[:, :8]).max() > 1e-3


@pytest.mark.parametrize("size, window, stride", [(32, 4, 2), (64, 8, 4), (256, 32, 16), (8, 2, 1)])
def test_occlusion_geometry_covers_the_image(size, window, stride):
    from bnp_cxr.attribution.library_methods import _starts, occlusion_geometry

    assert occlusion_geometry(size) == (window, stride)
    starts = _starts(size, window, stride)
    assert starts[0] == 0 and starts[-1] == size - window and np.all(np.diff(starts) <= stride)


@pytest.mark.parametrize("method", ["smoothgrad", "ig", "blur_ig", "guided_ig", "occlusion"])
def test_every_library_method_runs_through_attribution_maps(model, images, method):
    config = MethodConfig(ig_steps=4, smoothgrad_samples=2, batch_size=16)
    maps = attribution_maps(model, images[:1], method, config=config)
    assert maps.shape == (1, SIZE, SIZE) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert np.abs(maps).max() > 0


@pytest.mark.parametrize("method", ["vanilla", "gradcam"])
def test_a_model_reading_at_half_size_is_explained_at_the_input_size(method):
    size = 2 * SIZE  # the small CNN reads SIZE px: a feature map of more than one cell
    images = np.random.default_rng(3).uniform(size=(3, size, size, 1)).astype(np.float32)
    model = build_model("small_cnn", size, model_px=SIZE)
    maps = attribution_maps(model, images, method, target="bnpp")
    assert maps.shape == (3, size, size) and np.isfinite(maps).all()
    if method == "vanilla":  # the area-averaging gives each 2 x 2 block one gradient
        blocks = maps.reshape(3, SIZE, 2, SIZE, 2)
        assert maps.max() > 0
        np.testing.assert_allclose(blocks.max(axis=(2, 4)), blocks.min(axis=(2, 4)), rtol=1e-6)
