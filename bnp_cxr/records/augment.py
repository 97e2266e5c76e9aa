"""Training augmentation for batches of images [B, H, W, 1] in [0, 1], optionally with their masks.

Mild and anatomically safe: a small random affine (rotation, scale, aspect, shift about the centre), then
brightness / contrast jitter and Gaussian noise on the image only. Masks follow the same affine and are
re-thresholded at 0.5. No horizontal flip by default: the heart is on the patient's left, and a flipped
chest is a different (dextrocardic) anatomy. Stateless: the same seed gives the same batch.

`SiteAugmentConfig` adds a per-image rendering "as another site might take it" (exposure / gamma, a
narrower grey range, blur, a lower native resolution, detector noise), applied to the windowed record
image inside its content box *before* the input standardisation, where a real site difference acts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class SiteAugmentConfig:
    """Per-image other-site rendering before standardisation; each step applied with `probability`.

    Strengths are drawn uniformly (gamma log-uniformly) between no change and the range's end; sizes
    are fractions of the image side so a setting means the same anatomy blur at every record size.
    """

    probability: float = 0.5
    gamma_range: tuple[float, float] = (0.6, 1.6)  # exposure / detector response curve
    min_grey_range: float = 0.6  # the content's [0, 1] squeezed into a random sub-range this wide or wider
    max_blur_sigma_fraction: float = 0.005  # Gaussian sigma / image side (1.3 px at 256 px)
    min_resolution: float = 0.5  # resampled down to this fraction of the side and back (a coarser detector)
    max_noise_std: float = 0.03


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the training augmentation (angles in degrees, shifts as a fraction of the size)."""

    max_rotation_deg: float = 5.0
    max_scale_change: float = 0.05
    max_aspect_change: float = 0.0  # width / height stretched by up to this fraction (another field of view)
    max_shift_fraction: float = 0.04
    max_brightness: float = 0.05
    contrast_range: tuple[float, float] = (0.9, 1.1)
    noise_std: float = 0.01
    horizontal_flip: bool = False
    site: SiteAugmentConfig | None = None  # per-image other-site rendering before standardisation


# The training recipe's --site-augment: wider scale, aspect changes and the per-image site rendering.
SITE_AUGMENT = AugmentConfig(max_scale_change=0.1, max_aspect_change=0.1, site=SiteAugmentConfig())


def _affine_transforms(seed, batch: int, size: int, config: AugmentConfig):
    """Per-image inverse affine transforms [batch, 8] for ImageProjectiveTransformV3, about the centre."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    angle = tf.random.stateless_uniform([batch], seeds[0], -1.0, 1.0) * config.max_rotation_deg * math.pi / 180
    scale = 1.0 + tf.random.stateless_uniform([batch], seeds[1], -1.0, 1.0) * config.max_scale_change
    shift = tf.random.stateless_uniform([batch, 2], seeds[2], -1.0, 1.0) * config.max_shift_fraction * size
    flip = tf.ones([batch])
    if config.horizontal_flip:
        flip = tf.where(tf.random.stateless_uniform([batch], seeds[3]) < 0.5, -1.0, 1.0)
    # Drawn only when asked for, so configs without it keep their random streams (and results).
    aspect = tf.ones([batch])
    if config.max_aspect_change:
        aspect_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        aspect += tf.random.stateless_uniform([batch], aspect_seed, -1.0, 1.0) * config.max_aspect_change
    centre = (size - 1) / 2.0
    # Output pixel (x, y) samples input at A @ ([x, y] - c - shift) + c, A = diag(1/sx, 1/sy) R(-angle) with flip
    # on x; sx = scale * aspect stretches the width, sy = scale the height.
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos * flip / (scale * aspect), sin / (scale * aspect)
    b0, b1 = -sin * flip / scale, cos / scale
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


def _uniform(seed, low, high):
    return tf.random.stateless_uniform([], seed, low, high)


def gaussian_kernel(sigma, max_sigma: float) -> tuple[int, tf.Tensor]:
    """(radius px, normalised 1-D Gaussian [2 radius + 1] of `sigma` px, a tensor); the radius from `max_sigma`."""
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets / tf.maximum(sigma, 1e-3)))
    return radius, kernel / tf.reduce_sum(kernel)


def _gaussian_blur(image, sigma, max_sigma: float):
    """[H, W, 1] blurred by a Gaussian of `sigma` px (a tensor), kernel radius from `max_sigma`, reflected edges."""
    radius, kernel = gaussian_kernel(sigma, max_sigma)
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    height, width = image.shape[0], image.shape[1]
    # Separable, as weighted sums of shifted slices: the same numbers as two 1-channel tf.nn.conv2d passes, at a
    # fifth of their time per image on a CPU, where this runs for every training image (bench/input_pipeline.py).
    taps = range(2 * radius + 1)
    rows = tf.add_n([kernel[tap] * padded[tap:tap + height] for tap in taps])
    return tf.add_n([kernel[tap] * rows[:, tap:tap + width] for tap in taps])


def site_render(image, content_box, seed, config: SiteAugmentConfig):
    """One windowed image [H, W, 1] in [0, 1] rendered as another site might, inside its content box.

    content_box is [top, left, bottom, right] px (the letterbox padding outside stays as it is); seed a
    stateless seed [2]. Order as in an acquisition chain: detector resolution and blur, noise, then the
    grey-scale response (gamma, grey range).
    """
    size = image.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, 10)
    applied = tf.random.stateless_uniform([5], seeds[0]) < config.probability

    def coarser(out):
        side = tf.maximum(8, tf.cast(tf.round(size * _uniform(seeds[1], config.min_resolution, 1.0)), tf.int32))
        return tf.image.resize(tf.image.resize(out, [side, side], method="area"), [size, size], method="bilinear")

    max_sigma = config.max_blur_sigma_fraction * size

    def noisy(out):
        noise = tf.random.stateless_normal(tf.shape(out), seeds[3]) * _uniform(seeds[4], 0.0, config.max_noise_std)
        return tf.clip_by_value(out + noise, 0.0, 1.0)

    low, high = (math.log(value) for value in config.gamma_range)

    def narrower(out):
        width = _uniform(seeds[6], config.min_grey_range, 1.0)
        return _uniform(seeds[7], 0.0, 1.0) * (1.0 - width) + width * out

    steps = (coarser, lambda out: _gaussian_blur(out, _uniform(seeds[2], 0.0, max_sigma), max_sigma), noisy,
             lambda out: tf.pow(out, tf.exp(_uniform(seeds[5], low, high))), narrower)
    out = image
    for index, step in enumerate(steps):
        # tf.cond, not tf.where: a step not drawn for this image costs nothing (this runs per training image);
        # tf.cond traces both branches on the spot, so the closures see this iteration's step and image
        out = tf.cond(applied[index], lambda: step(out), lambda: out)
    rows, cols = tf.range(size)[:, None, None], tf.range(size)[None, :, None]
    box = tf.cast(content_box, tf.int32)
    inside = (rows >= box[0]) & (rows < box[2]) & (cols >= box[1]) & (cols < box[3])
    return tf.where(inside, out, image)
