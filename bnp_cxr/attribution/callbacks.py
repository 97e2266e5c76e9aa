"""The `saliency.core` callback contract for our Keras regressors.

PAIR's saliency library is framework-agnostic: each method calls
``call_model_function(x_batch, call_model_args, expected_keys) -> dict`` (Kapishnikov et al. 2019,
https://github.com/PAIR-code/saliency). Here one callback serves every method: input gradients for
vanilla gradients, SmoothGrad and integrated gradients (XRAI's base attribution), and the last conv
layer's values and gradients for Grad-CAM. Gradients are of one model output (log10 BNP or log10
BNPP) summed over the batch, i.e. each image's own output gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np
import saliency.core as saliency
import tensorflow as tf

# TARGETS: model output columns (bnp_cxr.models.OUTPUT_NAME): [log10 BNP, log10 BNPP].
from bnp_cxr.attribution.names import TARGETS
from bnp_cxr.models import last_conv_layer_name

CallModelFunction = Callable[[np.ndarray, Any, Sequence[str]], dict]


def output_index(target: str) -> int:
    """Column of the model output explained for `target` ('bnp' or 'bnpp')."""
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(TARGETS)}") from None


class ModelGradients:
    """Compiled gradient functions of one model output: input gradients and conv-layer values/gradients."""

    def __init__(self, model: keras.Model, target: str = "bnpp", conv_layer: str | None = None):
        self.model, self.target, self.index = model, target, output_index(target)
        self._conv_layer = conv_layer
        self._conv_model: keras.Model | None = None
        # reduce_retracing: the last batch of a sweep is smaller; one trace with a None batch dim serves all.
        self.input_gradients = tf.function(self._input_gradients, reduce_retracing=True)
        self.conv_gradients = tf.function(self._conv_gradients, reduce_retracing=True)

    @property
    def conv_layer(self) -> str:
        """Name of the layer Grad-CAM reads (the last spatial feature map unless named)."""
        if self._conv_layer is None:
            self._conv_layer = last_conv_layer_name(self.model)
        return self._conv_layer

    def _input_gradients(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = self.model(images, training=False)[:, self.index]
        return tape.gradient(outputs, images), outputs

    def _conv_gradients(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if self._conv_model is None:
            layer = self.model.get_layer(self.conv_layer)
            self._conv_model = keras.Model(self.model.inputs, [layer.output, self.model.outputs[0]])
        with tf.GradientTape() as tape:
            conv, outputs = self._conv_model(images, training=False)
            selected = outputs[:, self.index]
        return conv, tape.gradient(selected, conv), selected

    def call_model_function(self, x_batch: np.ndarray, call_model_args: Any = None,
                            expected_keys: Sequence[str] = ()) -> dict:
        """`saliency.core` callback: the keys the method asks for, as numpy arrays."""
        images = tf.convert_to_tensor(np.asarray(x_batch, dtype=np.float32))
        if images.shape.rank == 3:  # a single image (some methods pass H x W x C)
            images = images[None]
        result: dict[str, np.ndarray] = {}
        keys = set(expected_keys or ())
        if saliency.INPUT_OUTPUT_GRADIENTS in keys:
            gradients, _ = self.input_gradients(images)
            result[saliency.INPUT_OUTPUT_GRADIENTS] = gradients.numpy().reshape(np.shape(x_batch))
        if keys & {saliency.CONVOLUTION_LAYER_VALUES, saliency.CONVOLUTION_OUTPUT_GRADIENTS}:
            conv, gradients, _ = self.conv_gradients(images)
            result[saliency.CONVOLUTION_LAYER_VALUES] = conv.numpy()
            result[saliency.CONVOLUTION_OUTPUT_GRADIENTS] = gradients.numpy()
        if saliency.OUTPUT_LAYER_VALUES in keys:
            result[saliency.OUTPUT_LAYER_VALUES] = keras.ops.convert_to_numpy(
                self.model(images, training=False))[:, self.index]
        unknown = keys - set(result)
        if unknown:
            raise ValueError(f"call_model_function cannot provide {sorted(unknown)}")
        return result


def make_call_model_function(model: keras.Model, target: str = "bnpp",
                             conv_layer: str | None = None) -> CallModelFunction:
    """A `saliency.core` callback explaining `target` of `model` (Grad-CAM reads `conv_layer`)."""
    return ModelGradients(model, target, conv_layer).call_model_function
