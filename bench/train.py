"""Training throughput of bnp_cxr.training.train (tools/train.py's loop) vs a bare keras Model.fit.

Both sides train the same model (bnp_cxr.models.build_model) on the same records (make_dataset with
the same shuffle, batch size, drop_remainder and augmentation: on by default, as tools/train.py) and
validate on the same val split every epoch. Differences are exactly what the loop adds: its metrics
(masked MAE, two 400-bin AUCs), the learning-rate schedule, CSVLogger, TensorBoard, ModelCheckpoint
and BackupAndRestore. The bare side compiles the same MaskedL1 loss (labels may be NaN) with a
constant learning rate and no metrics or callbacks.

Steady state: a callback stamps the end of every epoch; throughput = train images of epochs 2..N over
the time from the end of epoch 1 to the end of epoch N (first epoch = tracing and compilation). The
train-phase share (epoch start -> validation start) is reported too. Runs alternate ours / bare
--repeats times (shared machines drift); medians are reported. Goal: ours >= 0.95x bare.

Both sides use the same dtype policy and XLA setting; --mixed-precision both runs every size in float32
and in mixed float16 (a row each), --xla compiles both sides' steps with XLA.

    python bench/train.py                                  # small_cnn at 256 px on work/records (CPU)
    python bench/train.py --backbone resnet152 --sizes 256 1024 --mixed-precision both --name train_gpu
    python bench/train.py --backbone resnet152 --sizes 256 1024 --mixed-precision both --xla --name train_gpu_xla
    python bench/train.py --backbone small_cnn --sizes 64 --epochs 2 --repeats 1 --mixed-precision both  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402

import keras  # noqa: E402

from bnp_cxr.training.config import POLICIES  # noqa: E402
from bnp_cxr.workspace import RECORDS_DIR, RunDir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.95


class EpochClock(keras.callbacks.Callback):
    """Stamps epoch start, validation start / end and epoch end (perf_counter seconds); add it last."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: dict[str, list[float]] = {"begin": [], "test_begin": [], "test_end": [], "end": []}

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.stamps["begin"].append(time.perf_counter())

    def on_test_begin(self, logs=None) -> None:  # fit's per-epoch validation
        self.stamps["test_begin"].append(time.perf_counter())

    def on_test_end(self, logs=None) -> None:
        self.stamps["test_end"].append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.stamps["end"].append(time.perf_counter())

    def steady(self, images_per_epoch: int) -> dict:
        """Images/s over epochs 2..N (whole epochs: steps, validation, callbacks) and seconds per phase."""
        begin, test_begin, test_end, end = (self.stamps[key] for key in ("begin", "test_begin", "test_end", "end"))
        if len(end) < 2:
            raise ValueError("need >= 2 epochs: the first one (compilation) is excluded")
        epochs = len(end) - 1

        def mean(pairs) -> float:
            return sum(b - a for a, b in pairs) / epochs

        train_s = mean(zip(begin[1:], test_begin[1:]))
        return {"img_s": images_per_epoch * epochs / (end[-1] - end[0]), "epoch_s": (end[-1] - end[0]) / epochs,
                "train_phase_img_s": images_per_epoch / train_s, "train_s": train_s,
                "validation_s": mean(zip(test_begin[1:], test_end[1:])),
                # Other callbacks' on_epoch_end (ours runs last), then the gap to the next epoch's start.
                "epoch_end_s": mean(zip(test_end[1:], end[1:])), "between_s": mean(zip(end[:-1], begin[1:]))}


def ensure_records(records: Path, size: int) -> None:
    """Write phantom records at `size` with tools/make_tfrecords.py when the folder has none."""
    from bnp_cxr.records.reader import list_shards

    try:
        list_shards(records, "train", size)
        list_shards(records, "val", size)
    except FileNotFoundError:
        print(f"no records at {size} px in {records}: running tools/make_tfrecords.py --sizes {size}")
        subprocess.run([sys.executable, str(REPO / "tools" / "make_tfrecords.py"), "--out", str(records),
                        "--sizes", str(size), "--resume", "--no-progress"], check=True)


def run_ours(args, size: int, batch_size: int, precision: str) -> dict:
    """One bnp_cxr.training.train run in a temporary run folder, timed."""
    from bnp_cxr.training import make_config, train

    clock = EpochClock()
    with tempfile.TemporaryDirectory() as run_dir:
        config = make_config({"records_dir": str(args.records), "size": size, "backbone": args.backbone,
                              "members": 1, "epochs": args.epochs, "batch_size": batch_size, "augment": args.augment,
                              "mixed_precision": precision, "xla": args.xla, "run_dir": run_dir,
                              "standardize": args.standardize})
        train(config, callbacks=[clock], verbose=0, log=lambda _: None)
        steps = int(json.loads(RunDir(run_dir).config.read_text())["steps_per_epoch"])
    return clock.steady(steps * batch_size)


def run_bare(args, size: int, batch_size: int, precision: str) -> dict:
    """A bare Model.fit on the same model and records, timed."""
    import tensorflow as tf

    from bnp_cxr.models import build_model
    from bnp_cxr.records.reader import AugmentConfig, make_dataset
    from bnp_cxr.training import MaskedL1
    from bnp_cxr.records.reader import count_records

    n_train = count_records(args.records, "train", size)
    drop = n_train >= batch_size  # the loop's rule: full batches when there are enough images
    steps = n_train // batch_size if drop else 1
    train_data = make_dataset(args.records, "train", size, batch_size=batch_size, training=True,
                              augment=AugmentConfig() if args.augment else None, drop_remainder=drop,
                              standardize=args.standardize).repeat()
    # A known length, as the loop gives its val set: Keras then never probes past the end.
    val_batches = math.ceil(count_records(args.records, "val", size) / batch_size)
    val_data = make_dataset(args.records, "val", size, batch_size=batch_size, deterministic=True,
                            standardize=args.standardize).apply(
        tf.data.experimental.assert_cardinality(val_batches))
    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        model = build_model(args.backbone, size)
        # No strategy: Keras's default feeding (batches copied to the device when a step starts).
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MaskedL1(), jit_compile=args.xla)
        clock = EpochClock()
        model.fit(train_data, validation_data=val_data, epochs=args.epochs, steps_per_epoch=steps,
                  callbacks=[clock], verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return clock.steady(steps * batch_size)


def main() -> None:
    from bnp_cxr.models import BACKBONES
    from bnp_cxr.training.config import gpus_visible

    gpus = gpus_visible()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=REPO / RECORDS_DIR)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet152" if gpus else "small_cnn",
                        help="default: resnet152 with a GPU, small_cnn without")
    parser.add_argument("--sizes", "--size", dest="sizes", type=int, nargs="+",
                        default=[256, 1024] if gpus else [256])
    parser.add_argument("--epochs", type=int, default=10, help="per run; the first is excluded (default: 10)")
    parser.add_argument("--batch-size", type=int, help="default: 32 up to 512 px, 8 above")
    parser.add_argument("--mixed-precision", choices=("on", "off", "bfloat16", "both"), default="on" if gpus else "off",
                        help="on = mixed float16, both = a float32 and a float16 row per size")
    parser.add_argument("--xla", action="store_true", help="jit_compile both sides' steps with XLA")
    parser.add_argument("--standardize", choices=("none", "clahe"), default="none",
                        help="model-input standardisation on both sides (default: none)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="augmentation on both sides (default: on, as tools/train.py)")
    parser.add_argument("--repeats", type=int, default=3, help="ours / bare pairs per size (default: 3)")
    parser.add_argument("--name", default="train", help="result file bench/results/NAME.json (default: train)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is excluded)")

    precisions = ["off", "on"] if args.mixed_precision == "both" else [args.mixed_precision]
    rows = []
    for size in args.sizes:
        ensure_records(args.records, size)
        batch_size = args.batch_size or (32 if size <= 512 else 8)
        for precision in precisions:
            ours, bare = [], []
            for _ in range(args.repeats):
                ours.append(run_ours(args, size, batch_size, precision))
                bare.append(run_bare(args, size, batch_size, precision))
            row = {"backbone": args.backbone, "size_px": size, "batch_size": batch_size,
                   "dtype_policy": POLICIES[precision], "xla": args.xla}
            for name, runs in (("ours", ours), ("bare", bare)):
                for key in ("img_s", "train_phase_img_s", "epoch_s", "train_s", "validation_s", "epoch_end_s",
                            "between_s"):
                    row[f"{name}_{key}"] = statistics.median(run[key] for run in runs)
                row[f"{name}_img_s_runs"] = [round(run["img_s"], 2) for run in runs]
            row["ratio"] = row["ours_img_s"] / row["bare_img_s"]
            row["train_phase_ratio"] = row["ours_train_phase_img_s"] / row["bare_train_phase_img_s"]
            rows.append(row)
    phases = [f"{side}_{phase}_s" for phase in ("train", "validation", "epoch_end") for side in ("ours", "bare")]
    report(args.name, {"records": str(args.records), "epochs": args.epochs, "steady_state": "epochs 2..N",
                       "augment": args.augment, "xla": args.xla, "gpus": gpus, "repeats": args.repeats,
                       "goal_ratio": GOAL_RATIO, "meets_goal": all(row["ratio"] >= GOAL_RATIO for row in rows)},
           rows, ["backbone", "size_px", "batch_size", "dtype_policy", "ours_img_s", "bare_img_s", "ratio",
                  "train_phase_ratio", *phases])


if __name__ == "__main__":
    main()
