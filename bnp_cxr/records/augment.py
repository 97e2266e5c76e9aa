"""Training augmentation for batches of images [B, H, W, 1] in [0, 1], optionally with their masks.

Mild and anatomically safe: a small random affine (rotation, scale, shift about the centre), then
brightness / contrast jitter and Gaussian noise on the image only. Masks follow the same affine and are
re-thresholded at 0.5. No horizontal flip by default: the heart is on the patient's left, and a flipped
chest is a different (dextrocardic) anatomy. Stateless: the same seed gives the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the training augmentation (angles in degrees, shifts as a fraction of the size)."""

    max_rotation_deg: float = 5.0
    max_scale_change: float = 0.05
    max_shift_fraction: float = 0.04
    max_brightness: float = 0.05
    contrast_range: tuple[float, float] = (0.9, 1.1)
    noise_std: float = 0.01
    horizontal_flip: bool = False


def _affine_transforms(seed, batch: int, size: int, config: AugmentConfig):
    """Per-image inverse affine transforms [batch, 8] for ImageProjectiveTransformV3, about the centre."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    angle = tf.random.stateless_uniform([batch], seeds[0], -1.0, 1.0) * config.max_rotation_deg * math.pi / 180
    scale = 1.0 + tf.random.stateless_uniform([batch], seeds[1], -1.0, 1.0) * config.max_scale_change
    shift = tf.random.stateless_uniform([batch, 2], seeds[2], -1.0, 1.0) * config.max_shift_fraction * size
    flip = tf.ones([batch])
    if config.horizontal_flip:
        flip = tf.where(tf.random.stateless_uniform([batch], seeds[3]) < 0.5, -1.0, 1.0)
    centre = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Output pixel (x, y) samples input at A @ ([x, y] - c - shift) + c, A = R(-angle) / scale with flip on x.
    a0, a1 = cos * flip, sin
    b0, b1 = -sin * flip, cos
    x0 = -centre - shift[:, 0]
    y0 = -centre - shift[:, 1]
    a2 = a0 * x0 + a1 * y0 + centre
    b2 = b0 * x0 + b1 * y0 + centre
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _warp(images, transforms):
    """Bilinear resampling of [B, H, W, C] through per-image transforms; outside the image is 0 (air)."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def augment_batch(images, seed, config: AugmentConfig, masks=None):
    """Augment a batch [B, H, W, 1] with a stateless seed (shape [2]); returns images, or (images, masks).

    Masks ([B, H, W, 1], any numeric or bool dtype) get the images' affine, bilinear, then > 0.5, and
    keep their dtype; the photometric jitter and noise touch the images only.
    """
    batch, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    transforms = _affine_transforms(seeds[0], batch, size, config)
    images = _warp(images, transforms)
    brightness = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1], -1.0, 1.0) * config.max_brightness
    contrast = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2], *config.contrast_range)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean + brightness
    images += tf.random.stateless_normal(tf.shape(images), seeds[3], stddev=config.noise_std)
    images = tf.clip_by_value(images, 0.0, 1.0)
    if masks is None:
        return images
    # Warped separately from the images so the image path is the same with or without masks.
    masks = tf.convert_to_tensor(masks)
    moved = _warp(tf.cast(masks, tf.float32), transforms)
    return images, tf.cast(moved > 0.5, masks.dtype)
