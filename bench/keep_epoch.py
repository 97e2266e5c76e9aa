"""Which epoch to keep: the lowest val loss or the last one? Paired on the same training runs.

A run trained with keep="best" holds two checkpoints of one training: model.keras (the epoch with the
lowest val loss) and backup/latest.weights.h5 (BackupAndRestore's last completed epoch, which is the
final epoch of a finished run). Both are scored on the run's test split through the evaluation code
(predict_split, compute_metrics: AUC of the combined label with a patient-bootstrap CI); the paired
difference, last minus best, removes the run-to-run variation of training from the comparison.

    python bench/nih_recipe.py --size 128 --recipes keep_best        # the runs: 5 NIH folds, keep="best"
    python bench/keep_epoch.py work/nih/runs/keep_best/size128_fold*_seed0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402
from nih_recipe import score_row  # noqa: E402

BACKUP_WEIGHTS = Path("backup") / "latest.weights.h5"  # in a run folder (training.loop: BackupAndRestore)


def score(model, config: dict, n_boot: int) -> dict:
    """AUC of the combined label on the run's test split, with its patient-bootstrap CI (nih_recipe's columns)."""
    from bnp_cxr.evaluation import metrics
    from bnp_cxr.evaluation.evaluate import predict_split
    from bnp_cxr.records.standardize import run_standardization

    table = predict_split(model, config["records_dir"], "test", int(config["size"]),
                          standardize=run_standardization(config))
    return score_row(metrics.compute_metrics(table, n_boot=n_boot))


def compare(run_dir: Path, n_boot: int) -> dict:
    """One row: the run's best-val-loss and last epochs scored on its test split."""
    from bnp_cxr.evaluation.evaluate import load_run_model, read_run_config
    from bnp_cxr.training.loop import read_history
    from bnp_cxr.workspace import RunDir

    config = read_run_config(run_dir)
    if config.get("keep", "best") != "best":
        raise ValueError(f"{run_dir} kept its last epoch (keep={config['keep']!r}): there is no best-epoch model")
    history = read_history(RunDir(run_dir).history)
    if len(history) != config["epochs"] or not (run_dir / BACKUP_WEIGHTS).is_file():
        raise ValueError(f"{run_dir} is not a finished run ({len(history)} of {config['epochs']} epochs)")
    model = load_run_model(RunDir(run_dir).model)
    best = score(model, config, n_boot)
    model.load_weights(run_dir / BACKUP_WEIGHTS)
    last = score(model, config, n_boot)
    best_epoch = min(range(len(history)), key=lambda index: history[index]["val_loss"])
    return {"run": str(run_dir), "size_px": config["size"], "epochs": config["epochs"], "best_epoch": best_epoch + 1,
            "n_test": best["n_test"], "auc_best": best["auc"], "auc_last": last["auc"],
            "auc_best_text": best["auc_text"], "auc_last_text": last["auc_text"],
            "last_minus_best": last["auc"] - best["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders trained with keep='best'")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--name", default="keep_epoch", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    rows, problems = [], []
    for run_dir in args.runs:
        try:
            rows.append(compare(run_dir, args.n_boot))
        except (FileNotFoundError, ValueError) as error:
            problems.append(str(error))
            print(f"skipped: {error}", file=sys.stderr)
            continue
        print(f"{run_dir}: best epoch {rows[-1]['best_epoch']} AUC {rows[-1]['auc_best_text']}, "
              f"last epoch AUC {rows[-1]['auc_last_text']}", flush=True)
    if not rows:
        sys.exit("error: no run could be compared")
    differences = [row["last_minus_best"] for row in rows]
    summary = {"runs": len(rows), "auc_best_mean": statistics.fmean(row["auc_best"] for row in rows),
               "auc_last_mean": statistics.fmean(row["auc_last"] for row in rows),
               "last_minus_best_mean": statistics.fmean(differences),
               "last_minus_best_sd": statistics.stdev(differences) if len(differences) > 1 else None,
               "last_better": sum(difference > 0 for difference in differences)}
    report(args.name, {"summary": summary, "skipped": problems, "load_average": os.getloadavg()}, rows,
           ["run", "size_px", "best_epoch", "n_test", "auc_best_text", "auc_last_text", "last_minus_best"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
