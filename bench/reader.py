"""Reader throughput per size vs a bare tf.io.decode_raw pipeline over the same records.

Floor = TFRecordDataset -> parse only `image` -> decode_raw -> reshape -> float32 -> batch, with the
same interleave and prefetch. Ours = bnp_cxr.records.reader.make_dataset (evaluation mode: no
shuffle, no augmentation). Goal (issue #2): >= 0.8x the floor at 1024 px.

    python bench/reader.py                 # writes phantom records at 256 and 1024 px to a temp dir
    python bench/reader.py --records work/records --sizes 64 128 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import phantom_manifest, report

from bnp_cxr.workspace import COHORT_DIR


def floor_dataset(files: list[str], batch_size: int):
    """The bare pipeline: only what any reader of these records must do."""
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "height": tf.io.FixedLenFeature([], tf.int64),
            "width": tf.io.FixedLenFeature([], tf.int64)}

    def decode(raw):
        parsed = tf.io.parse_single_example(raw, spec)
        image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint16), tf.stack([parsed["height"], parsed["width"]]))
        return tf.cast(image, tf.float32)[..., tf.newaxis] / 65535.0

    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def images_per_second(make, epochs: int) -> float:
    """Best images/s over `epochs` full passes (a fresh iterator each, so file reads are counted)."""
    best = 0.0
    for _ in range(epochs):
        count, started = 0, time.perf_counter()
        for batch in make():
            count += int(batch[0].shape[0]) if isinstance(batch, tuple) else int(batch.shape[0])
        best = max(best, count / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, help="existing records folder (default: write phantom records)")
    parser.add_argument("--cohort", type=Path, default=COHORT_DIR)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5, help="passes per pipeline, best kept")
    parser.add_argument("--n", type=int, default=240, help="radiographs to write when generating records")
    args = parser.parse_args()

    import tensorflow as tf  # noqa: F401

    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.records.reader import list_shards, make_dataset
    from bnp_cxr.records.writer import IngestConfig, write_records

    temp = None
    records = args.records
    if records is None:
        temp = tempfile.TemporaryDirectory()
        records = Path(temp.name)
        manifest = load_manifest(*phantom_manifest(args.cohort, workers=2))
        rows = [row for row in manifest.rows if row.split == args.split][:args.n]
        manifest = replace(manifest, rows=rows, rejects=[], n_rows=len(rows))
        write_records(manifest, records, IngestConfig(sizes=tuple(args.sizes), shard_size=32, workers=2))
    rows = []
    for size in args.sizes:
        files = list_shards(records, args.split, size)
        floor = images_per_second(lambda: floor_dataset(files, args.batch_size), args.epochs)
        ours = images_per_second(lambda: make_dataset(records, args.split, size, batch_size=args.batch_size),
                                 args.epochs)
        rows.append({"size_px": size, "floor_img_s": floor, "ours_img_s": ours, "ratio": ours / floor})
    at_1024 = [row["ratio"] for row in rows if row["size_px"] == 1024]
    report("reader", {"split": args.split, "batch_size": args.batch_size, "goal_ratio_at_1024": 0.8,
                      "meets_goal": bool(at_1024 and at_1024[0] >= 0.8) if at_1024 else None},
           rows, ["size_px", "floor_img_s", "ours_img_s", "ratio"])
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
