"""tf.data reader: sharded records of one split and size -> (image float32 H x W x 1, targets) batches.

Targets are [log10 BNP, log10 BNPP] (NaN where the lab is missing; the training loss masks them).
Augmentation (training only) is mild and anatomically safe: a small random affine (rotation, scale,
shift), brightness / contrast jitter and Gaussian noise. No horizontal flip by default: the heart is
on the patient's left, and a flipped chest is a different (dextrocardic) anatomy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from bnp_cxr.records.schema import UINT16_MAX, feature_spec, shard_glob

TARGET_KEYS = ("log10_bnp", "log10_bnpp")


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


def list_shards(records_dir: str | os.PathLike, split: str, size: int) -> list[str]:
    """The shard files of a split at one size, sorted; raises FileNotFoundError if there are none."""
    paths = sorted(str(path) for path in Path(records_dir).glob(shard_glob(split, size)))
    if not paths:
        raise FileNotFoundError(f"no {split} records at {size} px in {records_dir} "
                                f"(expected {shard_glob(split, size)}); run tools/make_tfrecords.py --sizes {size}")
    return paths


METADATA_KEYS = ("image_id", "patient_id", "positive", "bnp_censored", "bnpp_censored", "content_box")
MASK_KEYS = ("lung_mask", "component_mask")


def _parse_record(serialized, size: int, with_metadata: bool):
    """Parse one record, only the features asked for (the full spec costs ~30% at 1024 px)."""
    spec = feature_spec()
    wanted = ("image", *TARGET_KEYS, *((*METADATA_KEYS, *MASK_KEYS) if with_metadata else ()))
    parsed = tf.io.parse_single_example(serialized, {key: spec[key] for key in wanted})
    # Static shapes let Keras build models and the augmentation know the size at trace time.
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint16, little_endian=True), [size, size, 1])
    image = tf.cast(image, tf.float32) / UINT16_MAX
    targets = tf.stack([parsed[key] for key in TARGET_KEYS])
    if not with_metadata:
        return image, targets
    metadata = {key: parsed[key] for key in METADATA_KEYS}
    zeros = tf.constant(bytes(size * size))
    for key in MASK_KEYS:
        known = tf.strings.length(parsed[key]) > 0
        metadata[f"has_{key}"] = known
        # Unknown masks become zeros so a batch keeps one structure; has_* says which were known.
        raw = tf.where(known, parsed[key], zeros)
        metadata[key] = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [size, size])
    return image, targets, metadata


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


def augment_batch(images, seed, config: AugmentConfig):
    """Apply the training augmentation to a batch [B, H, W, 1] with a stateless seed (shape [2])."""
    batch, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    transforms = _affine_transforms(seeds[0], batch, size, config)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    brightness = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1], -1.0, 1.0) * config.max_brightness
    contrast = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2], *config.contrast_range)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean + brightness
    images += tf.random.stateless_normal(tf.shape(images), seeds[3], stddev=config.noise_std)
    return tf.clip_by_value(images, 0.0, 1.0)


def make_dataset(records_dir: str | os.PathLike, split: str, size: int, *, batch_size: int = 32,
                 training: bool = False, augment: AugmentConfig | None = None, shuffle_buffer: int = 1024,
                 cache: bool | str = False, deterministic: bool = False, seed: int = 0,
                 with_metadata: bool = False, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (image [B, size, size, 1] in [0, 1], targets [B, 2]) (+ metadata dict if asked).

    training=True shuffles files and elements (reshuffled every epoch); `augment` (an AugmentConfig)
    turns on the training augmentation. deterministic=True fixes the order for tests; with a seed,
    shuffling and augmentation are reproducible.
    """
    files = list_shards(records_dir, split, size)
    autotune = tf.data.AUTOTUNE
    options = tf.data.Options()
    options.deterministic = deterministic
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                 num_parallel_calls=autotune, deterministic=deterministic)
    if cache:  # the serialised records: compact, and parsing them again is cheap
        dataset = dataset.cache("" if cache is True else str(cache))
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda record: _parse_record(record, size, with_metadata), num_parallel_calls=autotune,
                          deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, pair: (augment_batch(batch[0], pair, augment), *batch[1:]), num_parallel_calls=autotune)
    return dataset.prefetch(autotune).with_options(options)
