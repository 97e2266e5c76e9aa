"""How long does the whole default recipe take on all 1,124 shared NIH images, run as a user runs it?

The NIH goal of issue 12 is timed on a model trained on every shared image (then tested on other patients): this
bench measures that run directly instead of scaling a fold's minutes. All rows of the NIH manifest
(bnp_cxr.data.sources.nih) get a patient-level split, val = 1/8 of the patients (as in bench/nih_recipe.py's
folds), train the rest, no test. Then the documented commands run as subprocesses, each timed by the wall clock:

    python tools/make_tfrecords.py --manifest work/nih/input/manifest_whole.csv --out ... --sizes 256
    python tools/train.py --records ... --size 256 --run-dir ...        # the whole CPU default, pretraining included

The run's val split is scored afterwards (tools/evaluate.py's code) to show that the model learnt; those images
were in the SimCLR pretraining (train + val, without labels) and monitored training, so their AUC is no test.
Nothing else should run beside it (the minutes are the result).

    python bench/nih_whole_run.py --size 256 --name nih_whole_run_256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402
from nih_recipe import (DEFAULT_DATA, FOLD_SEED, VAL_FRACTION, pretrain_minutes, read_manifest,  # noqa: E402
                        score_row, write_split_manifest)

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUDGET_MIN = 45  # issue 12: the whole default recipe at 256 px on a 2-core CPU


def whole_manifest(manifest: Path, seed: int) -> tuple[Path, dict]:
    """manifest_whole.csv beside `manifest`: every row, val = VAL_FRACTION of the patients, train the rest."""
    import numpy as np
    from sklearn.model_selection import GroupShuffleSplit

    columns, rows = read_manifest(manifest)
    groups = np.array([row["patient_id"] for row in rows])
    _, val = next(GroupShuffleSplit(1, test_size=VAL_FRACTION, random_state=seed).split(rows, groups=groups))
    split = np.full(len(rows), "train", dtype=object)
    split[val] = "val"
    path = write_split_manifest(manifest.with_name("manifest_whole.csv"), columns, rows, split)
    counts = {name: int((split == name).sum()) for name in ("train", "val")}
    return path, {"rows": len(rows), "patients": len(set(groups)), **counts}


def timed(command: list[str]) -> float:
    """Run a documented command from the repository root; its wall-clock minutes (exits on failure)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=REPO)
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} exited with {done.returncode}")
    return (time.perf_counter() - started) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NIH folder (labels.csv or Data_Entry)")
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih", help="manifest, records and runs")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--name", default="nih_whole_run", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: no NIH data at {args.data}; pass --data")
    from bnp_cxr.data.sources.nih import write_nih_manifest
    from bnp_cxr.evaluation.evaluate import evaluate_run
    from bnp_cxr.workspace import RunDir

    manifest, counts = whole_manifest(write_nih_manifest(args.data, args.work / "input").manifest, FOLD_SEED)
    records, run_dir = args.work / f"records{args.size}" / "whole", args.work / "runs" / "whole" / f"size{args.size}"
    for stale in (records, run_dir):  # a fresh run each time: reused records or encoders would hide minutes
        shutil.rmtree(stale, ignore_errors=True)
    records_min = timed(["tools/make_tfrecords.py", "--manifest", str(manifest), "--out", str(records),
                         "--sizes", str(args.size), "--no-progress"])
    train_min = timed(["tools/train.py", "--records", str(records), "--size", str(args.size), "--run-dir",
                       str(run_dir), "--verbose", "0"])
    config = json.loads(RunDir(run_dir).config.read_text())
    pretrain_min = pretrain_minutes(run_dir).get("pretrain_min")
    val = score_row(evaluate_run(run_dir, records, split="val", n_boot=args.n_boot))
    row = {**counts, "size_px": args.size, "model_px": config.get("model_px"), "members": config.get("members"),
           "pretrain": config.get("pretrain"), "records_min": round(records_min, 1),
           "pretrain_min": pretrain_min, "train_min": round(train_min, 1),
           "within_budget": train_min <= BUDGET_MIN, "val_auc_text": val["auc_text"], "val_scores": val}
    print(f"whole recipe: {train_min:.1f} min (pretraining {pretrain_min} of it); records {records_min:.1f} min; "
          f"val AUC {val['auc_text']}", flush=True)
    report(args.name, {"data": "every image of the NIH ChestX-ray14 subset (../shared/data/nih), stand-in labs as "
                               "bench/nih_recipe.py", "split": f"val {VAL_FRACTION:g} of the patients "
                                                               f"(GroupShuffleSplit seed {FOLD_SEED}), no test",
                       "budget_min": BUDGET_MIN, "load_average": os.getloadavg()},
           [row], ["rows", "train", "val", "size_px", "model_px", "members", "pretrain", "records_min",
                   "pretrain_min", "train_min", "within_budget", "val_auc_text"])


if __name__ == "__main__":
    main()
