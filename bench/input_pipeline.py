"""Seconds per training batch of the input pipeline alone (records.reader.make_dataset), by recipe ingredient.

On a 2-core CPU the input pipeline and the training step share the cores, so what the pipeline costs is added to
every fine-tuning step. One epoch of the train split is read per row (after two warm-up batches), batches of 32
as the CPU recipe trains, shuffled and augmented as training does: no standardisation, CLAHE, CLAHE and the mild
affine, and CLAHE with the other-site rendering (records.augment.SITE_AUGMENT: the CPU default). The last row is
the same default with the site rendering's Gaussian blur as two 1-channel tf.nn.conv2d passes (its form before
the shifted-slice sums it has now, the same numbers), to show what that change saves.

    python bench/nih_recipe.py --size 256 --folds 0 --recipes default   # makes work/nih/records256/fold0
    python bench/input_pipeline.py --records work/nih/records256/fold0 --size 256 --name input_pipeline
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def conv2d_blur(image, sigma, max_sigma: float):
    """The site rendering's blur as it was: two 1-channel tf.nn.conv2d passes over the reflected image."""
    import tensorflow as tf

    from bnp_cxr.records.augment import gaussian_kernel

    radius, kernel = gaussian_kernel(sigma, max_sigma)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    rows = tf.nn.conv2d(padded, tf.reshape(kernel, [-1, 1, 1, 1]), 1, "VALID")
    return tf.nn.conv2d(rows, tf.reshape(kernel, [1, -1, 1, 1]), 1, "VALID")[0]


def seconds_per_batch(records: Path, size: int, batch_size: int, **options) -> tuple[float, int]:
    """(seconds per batch over one shuffled training epoch after 2 warm-up batches, batches read)."""
    from bnp_cxr.records.reader import make_dataset

    dataset = make_dataset(records, "train", size, batch_size=batch_size, training=True, drop_remainder=True,
                           **options)
    for _ in dataset.take(2):
        pass
    started, batches = time.perf_counter(), 0
    for _ in dataset:
        batches += 1
    return (time.perf_counter() - started) / max(batches, 1), batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=REPO / WORK_DIR / "nih" / "records256" / "fold0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--name", default="input_pipeline", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    from bnp_cxr.records import augment
    from bnp_cxr.records.augment import SITE_AUGMENT, AugmentConfig

    rows_of = [("none", {"standardize": "none"}), ("clahe", {"standardize": "clahe"}),
               ("clahe + affine", {"standardize": "clahe", "augment": AugmentConfig()}),
               ("clahe + site (CPU default)", {"standardize": "clahe", "augment": SITE_AUGMENT})]
    rows = []
    for name, options in rows_of:
        seconds, batches = seconds_per_batch(args.records, args.size, args.batch_size, **options)
        rows.append({"pipeline": name, "batches": batches, "seconds_per_batch": round(seconds, 4)})
    blur = augment._gaussian_blur
    augment._gaussian_blur = conv2d_blur
    try:
        seconds, batches = seconds_per_batch(args.records, args.size, args.batch_size, standardize="clahe",
                                             augment=SITE_AUGMENT)
    finally:
        augment._gaussian_blur = blur
    rows.append({"pipeline": "clahe + site, blur by tf.nn.conv2d (before)", "batches": batches,
                 "seconds_per_batch": round(seconds, 4)})
    report(args.name, {"records": str(args.records), "size_px": args.size, "batch_size": args.batch_size},
           rows, ["pipeline", "batches", "seconds_per_batch"])


if __name__ == "__main__":
    main()
