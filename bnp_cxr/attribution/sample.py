"""The fixed sample of radiographs that attribution explains: the same images at every size.

Images are chosen by a seeded keyed hash of their pseudonymous image_id among those present at
every size, so a sample is reproducible, independent of shard order, and the same radiograph
appears in every column of a figure panel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from bnp_cxr.data.privacy import unit_interval_hash
from bnp_cxr.records.reader import list_shards


@dataclass(frozen=True)
class SampleImage:
    """One radiograph at one size, as the model reads it, with its masks and labels."""

    image_id: str
    patient_id: str  # pseudonymous
    size: int  # px
    image: np.ndarray  # float32 [size, size, 1] in [0, 1]
    lung_mask: np.ndarray | None  # bool [size, size]; None when the record has none
    component_mask: np.ndarray | None  # uint8 bitmask [size, size] (phantom truth)
    content_box: tuple[int, int, int, int]  # top, left, bottom, right (exclusive): non-padding area
    positive: int  # 1, 0, or -1 unknown
    true_log10: tuple[float, float]  # (log10 BNP, log10 BNPP); NaN when missing

    def valid_mask(self) -> np.ndarray:
        """bool [size, size]: True inside the content box (letterbox padding excluded)."""
        top, left, bottom, right = self.content_box
        valid = np.zeros((self.size, self.size), bool)
        valid[top:bottom, left:right] = True
        return valid


def record_image_ids(records_dir: str | os.PathLike, split: str, size: int) -> list[str]:
    """Image IDs of a split at one size, in record order (parses only the ID feature)."""
    import tensorflow as tf

    from bnp_cxr.records.schema import feature_spec

    spec = {"image_id": feature_spec()["image_id"]}
    dataset = tf.data.TFRecordDataset(list_shards(records_dir, split, size)).map(
        lambda record: tf.io.parse_single_example(record, spec)["image_id"])
    return [value.decode() for value in dataset.as_numpy_iterator()]


def choose_sample(id_lists: Sequence[Iterable[str]], n: int, seed: int = 0) -> list[str]:
    """Up to n image IDs present in every list, ordered by a seeded hash (stable as n grows)."""
    if n < 1:
        raise ValueError(f"the sample needs n >= 1 images, got {n}")
    common = set.intersection(*(set(ids) for ids in id_lists)) if id_lists else set()
    return sorted(common, key=lambda image_id: unit_interval_hash(image_id, f"attribution-sample-{seed}"))[:n]


def shard_slice(image_ids: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """The IDs of shard I of N (every N-th ID from I), so N machines split one sample."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return list(image_ids[index::count])


def load_sample(records_dir: str | os.PathLike, split: str, size: int, image_ids: Sequence[str], *,
                standardize: str = "none") -> list[SampleImage]:
    """The records of `image_ids` at `size` as the run's model sees them (standardised), in the order given."""
    from bnp_cxr.records.reader import make_dataset

    wanted = set(image_ids)
    found: dict[str, SampleImage] = {}
    dataset = make_dataset(records_dir, split, size, batch_size=64, deterministic=True, with_metadata=True,
                           standardize=standardize)
    for images, targets, meta in dataset.as_numpy_iterator():
        for i, raw_id in enumerate(meta["image_id"]):
            image_id = raw_id.decode()
            if image_id not in wanted:
                continue
            found[image_id] = SampleImage(
                image_id=image_id,
                patient_id=meta["patient_id"][i].decode(),
                size=size,
                image=images[i],
                lung_mask=meta["lung_mask"][i].astype(bool) if meta["has_lung_mask"][i] else None,
                component_mask=meta["component_mask"][i] if meta["has_component_mask"][i] else None,
                content_box=tuple(int(v) for v in meta["content_box"][i]),
                positive=int(meta["positive"][i]),
                true_log10=(float(targets[i, 0]), float(targets[i, 1])),
            )
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        raise ValueError(f"{len(missing)} sampled images not found in the {split} records at {size} px in "
                         f"{records_dir} (e.g. {missing[0]}): were the sizes written from different manifests?")
    return [found[image_id] for image_id in image_ids]
