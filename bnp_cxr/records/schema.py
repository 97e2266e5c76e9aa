"""TFRecord schema: what one tf.train.Example holds, how to build and parse it, and shard names.

Documented for users in data_manifests/README.md ("Record schema"). Images are square (letterboxed),
stored as raw little-endian uint16, row-major, height x width, intensity-windowed to [0, 65535].
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
UINT16_MAX = 65535
SHARD_PATTERN = re.compile(r"^(?P<split>train|val|test)-(?P<size>\d+)px-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def shard_name(split: str, size: int, index: int, count: int) -> str:
    """File name of one shard: ``{split}-{size}px-{index:05d}-of-{count:05d}.tfrecord``."""
    return f"{split}-{size}px-{index:05d}-of-{count:05d}.tfrecord"


def shard_glob(split: str, size: int) -> str:
    """Glob matching every shard of a split at one size."""
    return f"{split}-{size}px-?????-of-?????.tfrecord"


def has_shards(records_dir: str | os.PathLike, split: str, size: int) -> bool:
    """Whether a records folder holds any shard of `split` at `size` px."""
    return any(Path(records_dir).glob(shard_glob(split, size)))


@dataclass(frozen=True)
class RecordImage:
    """One radiograph at one size, ready to serialise (arrays are size x size)."""

    image: np.ndarray  # uint16
    lung_mask: np.ndarray | None  # uint8 0/1
    component_mask: np.ndarray | None  # uint8 bitmask, COMPONENT_BITS
    pixel_spacing_mm: tuple[float, float]  # at this size; NaN when unknown
    content_box: tuple[int, int, int, int]  # top, left, bottom, right (exclusive) of the non-padding area


def finding_key(name: str) -> str:
    """The feature holding a finding column (1 / 0 / -1 = not given): ``finding/<name>``."""
    return f"finding/{name}"


def feature_spec(findings: tuple[str, ...] = ()):
    """The tf.io parsing spec of a record (optional features default to empty / NaN / -1), plus finding features."""
    import tensorflow as tf

    nan2 = [math.nan, math.nan]
    return {
        **{finding_key(name): tf.io.FixedLenFeature([], tf.int64, default_value=-1) for name in findings},
        "image": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "patient_id": tf.io.FixedLenFeature([], tf.string),
        "split": tf.io.FixedLenFeature([], tf.string),
        "log10_bnp": tf.io.FixedLenFeature([], tf.float32),
        "log10_bnpp": tf.io.FixedLenFeature([], tf.float32),
        "bnp_censored": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "bnpp_censored": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "positive": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "view": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "lung_mask": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "component_mask": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "pixel_spacing_mm": tf.io.FixedLenFeature([2], tf.float32, default_value=nan2),
        "source_pixel_spacing_mm": tf.io.FixedLenFeature([2], tf.float32, default_value=nan2),
        "source_height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "source_width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "content_box": tf.io.FixedLenFeature([4], tf.int64, default_value=[0, 0, 0, 0]),
        "schema_version": tf.io.FixedLenFeature([], tf.int64, default_value=SCHEMA_VERSION),
    }


def serialize_example(row, record: RecordImage, source_shape: tuple[int, int],
                      source_spacing_mm: tuple[float, float] | None) -> bytes:
    """Serialise one ImageRow at one size into tf.train.Example bytes."""
    import tensorflow as tf

    def _bytes(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _ints(*values: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def _floats(*values: float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    height, width = record.image.shape
    features = {
        "image": _bytes(np.ascontiguousarray(record.image, dtype="<u2").tobytes()),
        "height": _ints(height),
        "width": _ints(width),
        "image_id": _bytes(row.image_id.encode()),
        "patient_id": _bytes(row.patient_key.encode()),
        "split": _bytes(row.split.encode()),
        "log10_bnp": _floats(row.log10_bnp),
        "log10_bnpp": _floats(row.log10_bnpp),
        "bnp_censored": _ints(row.bnp_censored),
        "bnpp_censored": _ints(row.bnpp_censored),
        "positive": _ints(row.positive),
        "view": _bytes(row.view.encode()),
        "pixel_spacing_mm": _floats(*record.pixel_spacing_mm),
        "source_pixel_spacing_mm": _floats(*(source_spacing_mm or (math.nan, math.nan))),
        "source_height": _ints(source_shape[0]),
        "source_width": _ints(source_shape[1]),
        "content_box": _ints(*record.content_box),
        "schema_version": _ints(SCHEMA_VERSION),
    }
    if record.lung_mask is not None:
        features["lung_mask"] = _bytes(np.ascontiguousarray(record.lung_mask, dtype=np.uint8).tobytes())
    # Only manifests with finding columns add features: records without them stay byte-identical.
    features.update({finding_key(name): _ints(value) for name, value in getattr(row, "findings", ())})
    if record.component_mask is not None:
        features["component_mask"] = _bytes(np.ascontiguousarray(record.component_mask, dtype=np.uint8).tobytes())
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def parse_example(serialized):
    """Parse a serialised record into a dict of tensors; `image` becomes uint16 [H, W]."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    shape = tf.stack([parsed["height"], parsed["width"]])
    parsed["image"] = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint16, little_endian=True), shape)
    return parsed

