"""The lung U-Net (Ronneberger et al., MICCAI 2015): model, BCE + soft Dice loss, and Dice scores."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _conv_block(x, filters: int, name: str):
    for k in (1, 2):
        # No conv bias: batch normalisation's beta replaces it.
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
        # Momentum 0.9 (Keras: 0.99): the moving statistics settle within the few hundred steps of a small set.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{k}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{k}")(x)
    return x


def build_unet(size: int, *, base_filters: int = 16, depth: int = 4) -> keras.Model:
    """U-Net [B,size,size,1] in [0,1] -> sigmoid lung probability [B,size,size,1]; filters double per level."""
    if depth < 1 or size % 2 ** depth:
        raise ValueError(f"size {size} must be divisible by 2**depth = {2 ** depth} (depth >= 1)")
    inputs = keras.Input((size, size, 1), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2 ** depth, "bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_upconv")(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, f"up{level}")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name=f"unet{size}")


@keras.saving.register_keras_serializable(package="bnp_cxr.lungs")
def bce_soft_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus (1 - per-image soft Dice): BCE for pixel calibration, Dice for overlap."""
    y_true = tf.cast(y_true, y_pred.dtype)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    overlap = tf.reduce_sum(y_true * y_pred, axis=(1, 2, 3))
    total = tf.reduce_sum(y_true + y_pred, axis=(1, 2, 3))
    soft_dice = (2.0 * overlap + 1.0) / (total + 1.0)
    return bce + 1.0 - soft_dice


@keras.saving.register_keras_serializable(package="bnp_cxr.lungs")
def dice_metric(y_true, y_pred):
    """Per-image Dice of the 0.5-thresholded prediction (empty vs empty = 1); Keras averages over images."""
    predicted = tf.cast(y_pred > 0.5, tf.float32)
    truth = tf.cast(y_true > 0.5, tf.float32)
    overlap = tf.reduce_sum(predicted * truth, axis=(1, 2, 3))
    total = tf.reduce_sum(predicted + truth, axis=(1, 2, 3))
    return tf.where(total > 0, 2.0 * overlap / tf.maximum(total, 1.0), 1.0)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|A&B| / (|A| + |B|) of two boolean masks of one image; 1.0 when both are empty."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(predicted, truth).sum()) / total


def dice_per_image(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """dice() of each image of two [N,H,W] boolean stacks."""
    return np.array([dice(p, t) for p, t in zip(predicted, truth, strict=True)], dtype=np.float64)
