"""Does the CPU recipe learn heart-failure signs from real radiographs? NIH ChestX-ray14, patient-level folds.

The shared NIH subset (../shared/data/nih: 1,124 images, 897 patients) becomes a manifest with stand-in
labs (bnp_cxr.data.sources.nih: cardiomegaly, edema or effusion -> BNPP 2000 pg/mL, else 100; a pipeline
check, not a BNP model) and finding columns. Patients go to K folds (StratifiedGroupKFold, seeded); for
fold k the test split is fold k, val is 1/8 of the other patients, train the rest. Each recipe (a set
of TrainConfig options over the defaults) is trained from scratch on every fold asked for through the
unchanged pipeline (write_records -> train -> evaluate_run) and scored by the test AUC of the combined
label (= heart-failure signs) with a patient-bootstrap CI, plus predicted BNPP against each finding.
Records and runs stay under work/ (never commit them: they derive from the images).

    python bench/nih_recipe.py --size 128 --recipes before default            # 5-fold CV, mean +- sd
    python bench/nih_recipe.py --size 128 --folds 0 --recipes before clahe default --name nih_ablation
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nih"
N_FOLDS, FOLD_SEED, VAL_FRACTION = 5, 0, 0.125
# TrainConfig options over the defaults; "default" is whatever `python tools/train.py` resolves to on a CPU.
RECIPES: dict[str, dict] = {
    "before": {"backbone": "small_cnn", "standardize": "none"},  # the CPU default before the real-image work
    "clahe": {"backbone": "small_cnn", "standardize": "clahe"},
    "default": {},
}
FINDINGS = ("cardiomegaly", "edema", "effusion")


def fold_manifests(manifest: Path, n_folds: int, seed: int) -> list[Path]:
    """manifest_fold{k}.csv beside `manifest`: its rows with a split column (test = fold k, patient-level)."""
    import numpy as np
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    labels = np.array([float(row["bnpp"]) > 400 for row in rows], dtype=int)
    groups = np.array([row["patient_id"] for row in rows])
    folds = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(rows, labels, groups)
    paths = []
    for k, (rest, test) in enumerate(folds):
        split = np.full(len(rows), "train", dtype=object)
        split[test] = "test"
        inner = GroupShuffleSplit(1, test_size=VAL_FRACTION, random_state=seed + k)
        _, val = next(inner.split(rest, groups=groups[rest]))
        split[rest[val]] = "val"
        path = manifest.with_name(f"manifest_fold{k}.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*columns, "split"])
            writer.writeheader()
            writer.writerows({**row, "split": value} for row, value in zip(rows, split))
        paths.append(path)
    return paths


def fold_records(manifest: Path, out: Path, size: int, workers: int) -> Path:
    """Records of one fold's manifest at `size` (complete ones are reused)."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    write_records(load_manifest(manifest), out, IngestConfig(sizes=(size,), workers=workers, resume=True,
                                                             progress=False))
    return out


def run_recipe(name: str, records: Path, run_dir: Path, size: int, fold: int, args) -> dict:
    """Train one recipe from scratch on a fold and evaluate it on the fold's test split; one result row."""
    from bnp_cxr.evaluation.evaluate import evaluate_run
    from bnp_cxr.training import make_config, train

    if run_dir.exists():  # a benchmark run always starts from scratch
        shutil.rmtree(run_dir)
    options = {"records_dir": str(records), "size": size, "seed": args.seed, "run_dir": str(run_dir),
               **({"epochs": args.epochs} if args.epochs else {}), **RECIPES[name]}
    started = time.perf_counter()
    result = train(make_config(options), verbose=0, log=lambda _: None)
    train_min = (time.perf_counter() - started) / 60
    evaluation = evaluate_run(run_dir, records, split="test", n_boot=args.n_boot)
    auc = evaluation["metrics"]["auc_combined"]
    row = {"recipe": name, "fold": fold, "size_px": size, "epochs": result.config.epochs,
           "standardize": result.config.standardize, "train_min": round(train_min, 1),
           "n_test": evaluation["n_images"], "auc": auc["estimate"], "auc_ci": [auc["ci_low"], auc["ci_high"]],
           "auc_text": f"{auc['estimate']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"}
    for finding in FINDINGS:
        row[f"auc_{finding}"] = evaluation.get("findings", {}).get(finding, {}).get("estimate")
    return row


def summarise(rows: list[dict]) -> dict:
    """Per recipe: folds, mean and sd of the test AUC, and the training minutes per fold."""
    summary = {}
    for name in dict.fromkeys(row["recipe"] for row in rows):
        aucs = [row["auc"] for row in rows if row["recipe"] == name]
        minutes = [row["train_min"] for row in rows if row["recipe"] == name]
        summary[name] = {"folds": len(aucs), "auc_mean": statistics.fmean(aucs),
                         "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else None,
                         "train_min_mean": statistics.fmean(minutes)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NIH folder (labels.csv or Data_Entry)")
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih", help="manifest, records and runs")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)), help="which of the 5 folds")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["before", "default"])
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--name", default="nih_recipe", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: no NIH data at {args.data}; pass --data")
    from bnp_cxr.data.sources.nih import write_nih_manifest

    manifests = fold_manifests(write_nih_manifest(args.data, args.work / "input").manifest, N_FOLDS, FOLD_SEED)
    rows = []
    for fold in args.folds:
        records = fold_records(manifests[fold], args.work / f"records{args.size}" / f"fold{fold}", args.size,
                               args.workers)
        for name in args.recipes:
            rows.append(run_recipe(name, records, args.work / "runs" / name / f"size{args.size}_fold{fold}",
                                   args.size, fold, args))
            print(f"{name} fold {fold}: AUC {rows[-1]['auc_text']} in {rows[-1]['train_min']} min", flush=True)
    report(args.name, {"data": "NIH ChestX-ray14 subset (../shared/data/nih); stand-in labs: cardiomegaly, edema "
                               "or effusion -> BNPP 2000 / BNP 500 pg/mL, else 100 / 30; a pipeline check, not a "
                               "BNP model", "folds": f"{N_FOLDS}-fold StratifiedGroupKFold by patient, seed "
                                                     f"{FOLD_SEED}; val {VAL_FRACTION:g} of the other patients",
                       "recipes": {name: RECIPES[name] for name in args.recipes}, "summary": summarise(rows)},
           rows, ["recipe", "fold", "size_px", "epochs", "standardize", "train_min", "n_test", "auc_text",
                  "auc_cardiomegaly", "auc_edema", "auc_effusion"])


if __name__ == "__main__":
    main()
