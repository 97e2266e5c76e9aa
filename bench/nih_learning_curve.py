"""How does the CPU default's NIH AUC grow with the number of labelled training films? A learning curve.

bench/nih_recipe.py's 5 patient-level folds, the same val and test patients, and the fold's train patients
subsampled (a seeded random fraction of the patients, all their films kept) before the records are written.
The default recipe (SimCLR on the train and val films, then the ensemble of five) runs unchanged on each. The
full train split (fraction 1) is nih_recipe.py's recipe views_model_px, the default's settings, reused from
its runs when they are there (same options and records, bench_row.json). Films of the train patients left out
of a fraction are counted in each row (left_out_train); they are neither trained on nor scored.

The hidden NIH check trains on all 1,124 shared films (990 train + 134 val in bench/nih_whole_run.py's split,
against ~790 + ~110 in a fold), so the curve's slope per doubling of the train films says what those extra
films are worth, as an extrapolation, not a measurement.

    python bench/nih_learning_curve.py --size 256 --fractions 0.6 1 --name nih_learning_curve_256
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402
from nih_recipe import (DEFAULT_DATA, FOLD_SEED, N_FOLDS, fold_manifests, fold_records, read_manifest,  # noqa: E402
                        run_recipe, write_split_manifest)

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL_RECIPE = "views_model_px"  # the CPU default's settings under their own name in nih_recipe.RECIPES


def subsample_train(manifest: Path, fraction: float, seed: int) -> tuple[Path, dict]:
    """manifest_fold{k}_train{pct}.csv beside a fold's manifest (the manifest itself for fraction 1): val and test as
    they are, `fraction` of the train patients (seeded), and the counts of what was kept and left out."""
    import numpy as np

    columns, rows = read_manifest(manifest)
    train_patients = sorted({row["patient_id"] for row in rows if row["split"] == "train"})
    rng = np.random.default_rng(seed)
    kept_patients = set(rng.choice(train_patients, size=round(fraction * len(train_patients)), replace=False))
    kept = [row for row in rows if row["split"] != "train" or row["patient_id"] in kept_patients]
    path = manifest
    if fraction < 1:
        path = manifest.with_name(f"{manifest.stem}_train{round(100 * fraction)}.csv")
        write_split_manifest(path, [column for column in columns if column != "split"], kept,
                             [row["split"] for row in kept])
    train = [row for row in kept if row["split"] == "train"]
    return path, {"train_patients": len(kept_patients), "train": len(train),
                  "train_positive": sum(float(row["bnpp"]) > 400 for row in train),
                  "left_out_train": len(rows) - len(kept)}


def slopes(rows: list[dict]) -> dict:
    """Per fold with a full and a smaller fraction: AUC gained per doubling of the train films (paired by fold)."""
    by_fold: dict[int, dict[float, dict]] = {}
    for row in rows:
        by_fold.setdefault(row["fold"], {})[row["fraction"]] = row
    per_fold = {}
    for fold, points in by_fold.items():
        if 1.0 in points and len(points) > 1:
            small = min(points)
            gain = points[1.0]["auc"] - points[small]["auc"]
            per_fold[fold] = gain / math.log2(points[1.0]["train"] / points[small]["train"])
    if not per_fold:
        return {}
    return {"auc_gain_per_doubling": per_fold, "mean": statistics.fmean(per_fold.values()),
            "sd": statistics.stdev(per_fold.values()) if len(per_fold) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NIH folder (labels.csv or Data_Entry)")
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih", help="manifest, records and runs")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.6, 1.0],
                        help="fractions of each fold's train patients (1: the whole train split)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--name", default="nih_learning_curve")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: no NIH data at {args.data}; pass --data")
    if any(not 0 < fraction <= 1 for fraction in args.fractions):
        sys.exit(f"error: --fractions must lie in (0, 1], got {args.fractions}")
    from bnp_cxr.data.sources.nih import write_nih_manifest

    # run_recipe's options: the recipe as it is, its own pretraining, reused when finished
    recipe_args = argparse.Namespace(epochs=None, encoder_from=None, fresh=False, work=args.work,
                                     n_boot=args.n_boot, workers=args.workers)
    manifests = fold_manifests(write_nih_manifest(args.data, args.work / "input").manifest, N_FOLDS, FOLD_SEED)
    rows = []
    for fold in args.folds:
        for fraction in sorted(args.fractions, reverse=True):
            pct = round(100 * fraction)
            manifest, counts = subsample_train(manifests[fold], fraction, fold)
            records = args.work / f"records{args.size}" / (f"fold{fold}" if fraction == 1 else f"fold{fold}_train{pct}")
            run_dir = (args.work / "runs" / FULL_RECIPE / f"size{args.size}_fold{fold}_seed0" if fraction == 1 else
                       args.work / "runs" / "learning_curve" / f"size{args.size}_fold{fold}_train{pct}_seed0")
            fold_records(manifest, records, args.size, args.workers)
            row = run_recipe(FULL_RECIPE, records, run_dir, args.size, fold, 0, recipe_args)
            rows.append({"fraction": fraction, **counts, **row})
            print(f"fold {fold}, {pct} % of the train patients ({counts['train']} films): AUC {row['auc_text']} "
                  f"in {row['train_min']} min", flush=True)
    report(args.name, {"data": "NIH ChestX-ray14 subset (../shared/data/nih), bench/nih_recipe.py's folds and "
                               "stand-in labs", "recipe": FULL_RECIPE, "fractions": args.fractions,
                       "slope": slopes(rows), "load_average": os.getloadavg()},
           rows, ["fold", "fraction", "train_patients", "train", "train_positive", "left_out_train", "n_test",
                  "auc_text", "train_min", "pretrain_min", "auc_vs_clear", "auc_vs_other_findings"])


if __name__ == "__main__":
    main()
