"""tf.data reader: sharded records of one split and size -> (image float32 H x W x 1, targets) batches.

Targets are [log10 BNP, log10 BNPP] (NaN where the lab is missing; the training loss masks them).
Training batches may be augmented by bnp_cxr.records.augment (mild affine, brightness / contrast, noise).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from bnp_cxr.records.augment import AugmentConfig, SiteAugmentConfig, augment_batch, site_render
from bnp_cxr.records.schema import UINT16_MAX, feature_spec, finding_key, shard_glob
from bnp_cxr.records.standardize import check_standardization, standardize_image
from bnp_cxr.workspace import SPLITS

TARGET_KEYS = ("log10_bnp", "log10_bnpp")


def list_shards(records_dir: str | os.PathLike, split: str, size: int) -> list[str]:
    """The shard files of a split at one size, sorted; raises FileNotFoundError if there are none."""
    paths = sorted(str(path) for path in Path(records_dir).glob(shard_glob(split, size)))
    if not paths:
        raise FileNotFoundError(f"no {split} records at {size} px in {records_dir} "
                                f"(expected {shard_glob(split, size)}); run tools/make_tfrecords.py --sizes {size}")
    return paths


def read_summary(records_dir: str | os.PathLike) -> dict[str, Any]:
    """The records folder's summary.json (make_tfrecords' counts and settings); {} without one."""
    summary = os.path.join(os.fspath(records_dir), "summary.json")
    if not tf.io.gfile.exists(summary):
        return {}
    with tf.io.gfile.GFile(summary) as handle:
        return json.load(handle)


def data_fingerprint(records_dir: str | os.PathLike, size: int) -> dict[str, Any]:
    """sha256 over the shard names and byte sizes of every split at `size` and that size's image counts.

    Only what this size's records hold counts: rewriting other sizes (which rewrites summary.json, with
    its timings) must not make a finished run at this size look stale.
    """
    records = Path(records_dir)
    hasher = hashlib.sha256()
    shards = {}
    for split in SPLITS:
        try:
            paths = [Path(path) for path in list_shards(records, split, size)]
        except FileNotFoundError:
            paths = []
        shards[split] = len(paths)
        for path in paths:
            hasher.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    summary = read_summary(records)
    if summary:
        per_size = summary.get("per_size", {}).get(str(size), {})
        hasher.update(json.dumps(per_size, sort_keys=True).encode())
    return {"sha256": hasher.hexdigest(), "size": size, "shards": shards, "summary_json": bool(summary),
            "images": {split: count_records(records, split, size) if shards[split] else 0 for split in SPLITS}}


def count_records(records_dir: str | os.PathLike, split: str, size: int) -> int:
    """Images of a split at a size: from summary.json when it lists them, else by reading the shards."""
    per_size = read_summary(records_dir).get("per_size", {}).get(str(size))
    if per_size is not None:
        return int(per_size.get(split, 0))
    dataset = tf.data.TFRecordDataset(list_shards(records_dir, split, size))
    return int(dataset.reduce(0, lambda count, _: count + 1))


def record_patients(records_dir: str | os.PathLike, split: str, size: int) -> list[bytes]:
    """The pseudonymous patient ID of every record of a split at a size, read without decoding the images."""
    spec = {"patient_id": tf.io.FixedLenFeature([], tf.string)}
    dataset = tf.data.TFRecordDataset(list_shards(records_dir, split, size))
    return list(dataset.map(lambda record: tf.io.parse_single_example(record, spec)["patient_id"]).as_numpy_iterator())


METADATA_KEYS = ("image_id", "patient_id", "positive", "bnp_censored", "bnpp_censored", "content_box")
MASK_KEYS = ("lung_mask", "component_mask")


def record_findings(records_dir: str | os.PathLike) -> tuple[str, ...]:
    """The finding columns the records carry (summary.json's finding_columns; none without it)."""
    return tuple(read_summary(records_dir).get("finding_columns", ()))


def standardized(image: tf.Tensor, content_box: tf.Tensor, method: str) -> tf.Tensor:
    """One image [H, W, 1] standardised inside its content box (bnp_cxr.records.standardize), in tf.data."""
    if method == "none":
        return image
    out = tf.numpy_function(lambda pixels, box: standardize_image(pixels, box, method), [image, content_box],
                            tf.float32, stateful=False)
    return tf.ensure_shape(out, image.shape)


def _parse_record(serialized, size: int, with_metadata: bool, findings: tuple[str, ...] = (),
                  standardize: str = "none", site: SiteAugmentConfig | None = None, site_seed=None,
                  finding_targets: bool = False):
    """Parse one record, only the features asked for (the full spec costs ~30% at 1024 px).

    With `site` (and its stateless `site_seed`), the windowed image is rendered as another site might take
    it (records.augment.site_render) before standardisation. With `finding_targets` the targets go on with
    the `findings` columns as 1.0 / 0.0, NaN where not given (training.findings' auxiliary heads).
    """
    spec = feature_spec(findings)
    finding_keys = tuple(finding_key(name) for name in findings) if with_metadata or finding_targets else ()
    needs_box = standardize != "none" or site is not None
    metadata_keys = (*METADATA_KEYS, *MASK_KEYS) if with_metadata else ("content_box",) if needs_box else ()
    wanted = ("image", *TARGET_KEYS, *metadata_keys, *finding_keys)
    parsed = tf.io.parse_single_example(serialized, {key: spec[key] for key in wanted})
    # Static shapes let Keras build models and the augmentation know the size at trace time.
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint16, little_endian=True), [size, size, 1])
    image = tf.cast(image, tf.float32) / UINT16_MAX
    if site is not None:
        image = site_render(image, parsed["content_box"], site_seed, site)
    image = standardized(image, parsed.get("content_box"), standardize)
    targets = tf.stack([parsed[key] for key in TARGET_KEYS])
    if finding_targets:
        given = tf.cast(tf.stack([parsed[key] for key in finding_keys]), tf.float32)
        targets = tf.concat([targets, tf.where(given < 0, tf.fill(tf.shape(given), float("nan")), given)], axis=0)
    if not with_metadata:
        return image, targets
    metadata = {key: parsed[key] for key in METADATA_KEYS}
    if finding_keys:  # [n_findings] in summary.json's order, -1 = not given
        metadata["findings"] = tf.stack([parsed[key] for key in finding_keys])
    zeros = tf.constant(bytes(size * size))
    for key in MASK_KEYS:
        known = tf.strings.length(parsed[key]) > 0
        metadata[f"has_{key}"] = known
        # Unknown masks become zeros so a batch keeps one structure; has_* says which were known.
        raw = tf.where(known, parsed[key], zeros)
        metadata[key] = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [size, size])
    return image, targets, metadata


def make_dataset(records_dir: str | os.PathLike, split: str | Sequence[str], size: int, *, batch_size: int = 32,
                 training: bool = False, augment: AugmentConfig | None = None, shuffle_buffer: int = 1024,
                 cache: bool | str = False, deterministic: bool = False, seed: int = 0,
                 with_metadata: bool = False, drop_remainder: bool = False, standardize: str = "none",
                 finding_targets: bool = False) -> tf.data.Dataset:
    """Batches of (image [B, size, size, 1] in [0, 1], targets [B, 2]) (+ metadata dict if asked) of a split, or of
    several splits read as one (e.g. ("train", "val")).

    finding_targets=True appends the records' finding columns (record_findings) to the targets: [B, 2 + F],
    1.0 / 0.0 and NaN where a finding is not given.

    training=True shuffles files and elements (reshuffled every epoch); `augment` (an AugmentConfig)
    turns on the training augmentation. deterministic=True fixes the order for tests; with a seed,
    shuffling and augmentation are reproducible. `standardize` ("none", "clahe") is applied to every image
    before augmentation (bnp_cxr.records.standardize); the run's config says which one its model expects.
    The augmentation's `site` rendering is the exception: it acts per image, before standardisation.
    """
    check_standardization(standardize)
    files = [path for name in ([split] if isinstance(split, str) else split)
             for path in list_shards(records_dir, name, size)]
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
    findings = record_findings(records_dir) if with_metadata or finding_targets else ()
    site = augment.site if augment is not None else None
    if site is not None:  # one stateless seed per image, from its own stream (the batch augmentation's stays as it was)
        site_seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, site_seeds))
    dataset = dataset.map(
        lambda record, site_seed=None: _parse_record(record, size, with_metadata, findings, standardize, site,
                                                     site_seed, finding_targets),
        num_parallel_calls=autotune, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, pair: (augment_batch(batch[0], pair, augment), *batch[1:]), num_parallel_calls=autotune)
    return dataset.prefetch(autotune).with_options(options)
