"""The saliency callback: gradients of the chosen output, the contract's keys, errors."""

import numpy as np
import pytest
import saliency.core as saliency
import tensorflow as tf

from archives import SMALL_CNN_SIZE as SIZE

from bnp_cxr.attribution.callbacks import ModelGradients, make_call_model_function, output_index


@pytest.mark.parametrize("target, index", [("bnp", 0), ("bnpp", 1)])
def test_input_gradients_are_those_of_the_chosen_output(model, target, index):
    images = np.random.default_rng(1).uniform(size=(3, SIZE, SIZE, 1)).astype(np.float32)
    result = make_call_model_function(model, target)(images, None, [saliency.INPUT_OUTPUT_GRADIENTS])
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = model(x, training=False)[:, index]
    expected = tape.gradient(output, x).numpy()
    np.testing.assert_allclose(result[saliency.INPUT_OUTPUT_GRADIENTS], expected, rtol=1e-5, atol=1e-7)
    assert output_index(target) == index


def test_conv_keys_and_output_values(model):
    gradients = ModelGradients(model, "bnpp")
    images = np.random.default_rng(2).uniform(size=(2, SIZE, SIZE, 1))
    keys = [saliency.CONVOLUTION_LAYER_VALUES, saliency.CONVOLUTION_OUTPUT_GRADIENTS, saliency.OUTPUT_LAYER_VALUES]
    result = gradients.call_model_function(images, None, keys)
    conv = result[saliency.CONVOLUTION_LAYER_VALUES]
    assert conv.ndim == 4 and conv.shape[0] == 2 and conv.shape == result[saliency.CONVOLUTION_OUTPUT_GRADIENTS].shape
    np.testing.assert_allclose(result[saliency.OUTPUT_LAYER_VALUES], model(images.astype(np.float32)).numpy()[:, 1],
                               rtol=1e-5)
    assert gradients.conv_layer == model.get_layer(gradients.conv_layer).name


def test_single_image_keeps_its_shape(model):
    image = np.random.default_rng(3).uniform(size=(SIZE, SIZE, 1))
    result = make_call_model_function(model)(image, None, [saliency.INPUT_OUTPUT_GRADIENTS])
    assert result[saliency.INPUT_OUTPUT_GRADIENTS].shape == image.shape


@pytest.mark.parametrize("call, message", [
    (lambda m: output_index("troponin"), "unknown target"),
    (lambda m: make_call_model_function(m)(np.zeros((1, SIZE, SIZE, 1)), None, ["NOT_A_KEY"]), "cannot provide"),
])
def test_errors(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)
