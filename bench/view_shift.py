"""Robust to another acquisition? Train on one view of the NIH subset, test on held-out patients of both views.

The shared NIH subset has PA films (upright, in the radiology department) and AP films (mostly portable,
bedside: other geometry, exposure, devices and patients). With --train-view PA, the model trains on PA films
only and is tested on the AP films of patients it never saw (the shift) and on PA films of held-out
patients (in distribution); the PA films of patients who also have an AP film are left out, so no patient
is on both sides. Each recipe of bench/nih_recipe.py is trained per seed through the unchanged pipeline;
the test AUC of the combined label (heart-failure signs) is reported per view with patient-bootstrap CIs,
for every seed and for the ensemble of the seeds. Stand-in labs: a pipeline check, not a BNP model.

    python bench/view_shift.py --recipes before default --seeds 0 1 2
    python bench/view_shift.py --train-view AP --name nih_view_shift_ap
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report
from nih_recipe import DEFAULT_DATA, RECIPES, VAL_FRACTION, mean_predictions, run_recipe, summarise, table_scores

from bnp_cxr.workspace import WORK_DIR, RunDir

REPO = Path(__file__).resolve().parents[1]
VIEWS = ("PA", "AP")
HELD_OUT_FRACTION = 0.2  # of the training view's patients without a film of the other view


def view_manifest(manifest: Path, train_view: str, seed: int) -> tuple[Path, dict]:
    """manifest_{view}.csv beside `manifest` with a split column; returns it and the planned counts."""
    import numpy as np
    from sklearn.model_selection import GroupShuffleSplit

    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    other = {row["patient_id"] for row in rows if row["view"] != train_view}
    own = np.array([i for i, row in enumerate(rows) if row["view"] == train_view and row["patient_id"] not in other])
    groups = np.array([rows[i]["patient_id"] for i in own])
    held = GroupShuffleSplit(1, test_size=HELD_OUT_FRACTION, random_state=seed)
    rest, held_out = next(held.split(own, groups=groups))
    _, val = next(GroupShuffleSplit(1, test_size=VAL_FRACTION, random_state=seed).split(rest, groups=groups[rest]))
    split = {int(i): "test" for i in own[held_out]}
    split.update({int(i): "train" for i in own[rest]})
    split.update({int(i): "val" for i in own[rest[val]]})
    split.update({i: "test" for i, row in enumerate(rows) if row["view"] != train_view})
    path = manifest.with_name(f"manifest_train_{train_view}.csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, "split"])
        writer.writeheader()
        writer.writerows({**rows[i], "split": split[i]} for i in sorted(split))
    left_out = len(rows) - len(split)
    counts = {name: sum(value == name for value in split.values()) for name in ("train", "val", "test")}
    return path, {**counts, "left_out_same_patient_other_view": left_out}


def image_views(manifest: Path) -> dict[str, str]:
    """Pseudonymous image_id (as in the records) -> view, from the manifest the records were written from."""
    from bnp_cxr.data.manifest import load_manifest

    return {row.image_id: row.view for row in load_manifest(manifest).rows}


def view_rows(prediction_files: list[Path], views: dict[str, str], n_boot: int) -> dict[str, dict]:
    """Per test view: the scores of the mean prediction of `prediction_files` (one file: that model)."""
    table = mean_predictions(prediction_files)
    table["view"] = table["image_id"].map(views)
    if table["view"].isna().any():
        raise ValueError(f"{prediction_files[0]}: test images missing from the manifest's image ids")
    return {view: table_scores(table[table["view"] == view].drop(columns="view").reset_index(drop=True), n_boot)
            for view in VIEWS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih_views")
    parser.add_argument("--train-view", choices=VIEWS, default="PA")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["before", "default"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--fresh", action="store_true", help="retrain runs that finished with the same options")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--name", default="nih_view_shift")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: no NIH data at {args.data}; pass --data")
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.data.sources.nih import write_nih_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    manifest, counts = view_manifest(write_nih_manifest(args.data, args.work / "input").manifest, args.train_view, 0)
    records = args.work / f"records_train_{args.train_view}"
    write_records(load_manifest(manifest), records, IngestConfig(sizes=(args.size,), workers=args.workers,
                                                                 resume=True, progress=False))
    views, rows = image_views(manifest), []
    for name in args.recipes:
        saved = []
        for seed in args.seeds:
            run_dir = args.work / "runs" / f"train_{args.train_view}" / name / f"size{args.size}_seed{seed}"
            run = run_recipe(name, records, run_dir, args.size, 0, seed, args)
            saved.append(run_dir / "predictions_test.csv")
            shutil.copyfile(RunDir(run_dir).predictions, saved[-1])
            for view, scores in view_rows(saved[-1:], views, args.n_boot).items():
                rows.append({**run, **scores, "test_view": view})
                print(f"{name} seed {seed} {view}: AUC {scores['auc_text']}", flush=True)
        if len(saved) > 1:
            for view, scores in view_rows(saved, views, args.n_boot).items():
                rows.append({"recipe": name, "seed": "ensemble", "size_px": args.size, **scores, "test_view": view})
    summary = {view: summarise([row for row in rows if row["test_view"] == view]) for view in VIEWS}
    report(args.name, {"data": "NIH ChestX-ray14 subset (../shared/data/nih); stand-in labs from heart-failure "
                               "signs (cardiomegaly, edema or effusion); a pipeline check, not a BNP model",
                       "train_view": args.train_view, "counts": counts,
                       "recipes": {name: RECIPES[name] for name in args.recipes},
                       "seeds": args.seeds, "summary": summary, "load_average": os.getloadavg()},
           rows, ["recipe", "seed", "test_view", "size_px", "train_min", "n_test", "auc_text", "auc_cardiomegaly",
                  "auc_edema", "auc_effusion"])


if __name__ == "__main__":
    main()
