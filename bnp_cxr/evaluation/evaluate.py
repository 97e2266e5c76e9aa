"""Evaluate a trained run on a split: predictions.csv, metrics.json (bootstrap CIs), roc.png, scatter.png.

A run folder (written by tools/train.py) holds `model.keras` and `config.json` with at least "size"
and "records_dir". Everything written here carries pseudonymous image / patient IDs only, as the
records do (bnp_cxr.data.privacy).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bnp_cxr.evaluation import plots
from bnp_cxr.evaluation import metrics
from bnp_cxr.evaluation.report import REPORT_HTML, REPORT_MD, write_report
from bnp_cxr.data.labs import PositivityThresholds
from bnp_cxr.records.standardize import run_standardization
from bnp_cxr.training.run_paths import rebased_json
from bnp_cxr.workspace import RECORDS_DIR, RunDir

PREDICTION_COLUMNS = ("image_id", "patient_id", "true_log10_bnp", "pred_log10_bnp", "true_log10_bnpp",
                      "pred_log10_bnpp", "positive", "bnp_censored", "bnpp_censored")
ROC_PLOT, SCATTER_PLOT = "roc.png", "scatter.png"  # in the run folder, beside predictions.csv and metrics.json


def load_run_model(path: str | os.PathLike):
    """Load a saved model for inference, with this package's custom layers registered."""
    from bnp_cxr.models import load_model

    return load_model(path, compile=False)


def predict_split(model, records_dir: str | os.PathLike, split: str, size: int, batch_size: int = 32,
                  standardize: str = "none") -> pd.DataFrame:
    """Predict every record of a split: one row per image with true and predicted log10 BNP / BNPP.

    Finding columns of the records (summary.json finding_columns) follow, 1 / 0 / -1 (not given).
    """
    import keras

    from bnp_cxr.records.reader import make_dataset, record_findings

    findings = record_findings(records_dir)
    dataset = make_dataset(records_dir, split, size, batch_size=batch_size, deterministic=True, with_metadata=True,
                           standardize=standardize)
    keys = ("image_id", "patient_id", "positive", "bnp_censored", "bnpp_censored", *(("findings",) if findings else ()))
    parts: dict[str, list[np.ndarray]] = {key: [] for key in (*keys, "true", "pred")}
    for images, targets, meta in dataset:
        prediction = np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), dtype=np.float64)
        if prediction.ndim != 2 or prediction.shape[1] != 2:
            raise ValueError(f"model output must be [batch, 2] (log10 BNP, log10 BNPP), got {prediction.shape}")
        parts["pred"].append(prediction)
        parts["true"].append(targets.numpy().astype(np.float64))
        for key in keys:
            parts[key].append(meta[key].numpy())
    if not parts["pred"]:
        raise ValueError(f"no {split} records at {size} px in {records_dir}")
    true, pred = np.concatenate(parts["true"]), np.concatenate(parts["pred"])
    frame = pd.DataFrame({
        "image_id": [value.decode() for value in np.concatenate(parts["image_id"])],
        "patient_id": [value.decode() for value in np.concatenate(parts["patient_id"])],
        # Targets are [log10 BNP, log10 BNPP] (bnp_cxr.records.reader.TARGET_KEYS); so is the model output.
        "true_log10_bnp": true[:, 0], "pred_log10_bnp": pred[:, 0],
        "true_log10_bnpp": true[:, 1], "pred_log10_bnpp": pred[:, 1],
        **{key: np.concatenate(parts[key]).astype(np.int64) for key in ("positive", "bnp_censored", "bnpp_censored")},
    })
    found = np.concatenate(parts["findings"]).astype(np.int64) if findings else None
    columns = {name: found[:, index] for index, name in enumerate(findings)}
    return pd.concat([frame[list(PREDICTION_COLUMNS)], pd.DataFrame(columns, index=frame.index)], axis=1)


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The run's config.json (needs "size"), its paths rebased where the run folder was moved with them."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder (tools/train.py)?")
    config = json.loads(path.read_text())
    if "size" not in config:
        raise ValueError(f"{path} has no 'size'")
    return rebased_json(config, run_dir)


def _model_path(run_dir: Path) -> Path:
    path = RunDir(run_dir).model
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the run first (tools/train.py)")
    return path


def evaluate_run(run_dir: str | os.PathLike, records_dir: str | os.PathLike | None = None, split: str = "test",
                 n_boot: int = 2000, seed: int = 0, batch_size: int = 32,
                 thresholds: PositivityThresholds = PositivityThresholds(),
                 out_dir: str | os.PathLike | None = None) -> dict:
    """Predict a split with the run's model and write predictions.csv, metrics.json, roc.png, scatter.png there.

    records_dir defaults to the run config's "records_dir", else work/records. out_dir: write those files there
    instead (e.g. another site's records), leaving the run's own evaluation and report as they are. Returns the
    metrics.json dict.
    """
    run_dir = Path(run_dir)
    elsewhere = scores_elsewhere(run_dir, out_dir)
    out = elsewhere or run_dir
    config = read_run_config(run_dir)
    size = int(config["size"])
    records_dir = Path(records_dir or config.get("records_dir") or RECORDS_DIR)
    model = load_run_model(_model_path(run_dir))
    table = predict_split(model, records_dir, split, size, batch_size, run_standardization(config))
    result = metrics.compute_metrics(table, n_boot=n_boot, seed=seed, thresholds=thresholds)
    result = {"run_dir": str(run_dir), "split": split, "size": size, "records_dir": str(records_dir), **result}
    findings = [column for column in table.columns if column not in PREDICTION_COLUMNS]
    if findings:  # the journal version's secondary analysis: predicted BNPP against radiological findings
        result["findings"] = metrics.finding_aucs(table, findings, n_boot=n_boot, seed=seed)
        # which negatives it confuses with positives: clear films, or films with another finding
        result["negatives"] = metrics.negative_kind_aucs(table, findings, n_boot=n_boot, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(RunDir(out).predictions, index=False, float_format="%.6g")
    RunDir(out).metrics.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    plots.roc_figure(table, result, out / ROC_PLOT, thresholds)
    plots.scatter_figure(table, result, out / SCATTER_PLOT, thresholds)
    if elsewhere is None:
        write_report(run_dir)  # report.md / report.html: the run as one document (bnp_cxr.evaluation.report)
    return result


def _fmt(entry: dict, digits: int = 3) -> str:
    if entry["estimate"] is None:
        return "n/a"
    low, high = (math.nan if entry[key] is None else entry[key] for key in ("ci_low", "ci_high"))
    return f"{entry['estimate']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_table(result: dict) -> str:
    """A short plain-text table of every metric with its 95% CI and counts."""
    boot = result["bootstrap"]
    lines = [f"{result.get('split', '?')} split: {result['n_images']} images, {result['n_patients']} patients; "
             f"{boot['ci_level']:.0%} CI: {boot['resampling_unit']}-level percentile bootstrap, "
             f"{boot['n_boot']} resamples, seed {boot['seed']}",
             f"{'metric':32s} {'estimate [95% CI]':>26s} {'n':>7s} {'patients':>9s} {'skipped':>8s}"]
    for name, entry in result["metrics"].items():
        lines.append(f"{name:32s} {_fmt(entry):>26s} {entry['n']:7d} {entry['n_patients']:9d} "
                     f"{entry['n_boot_skipped']:8d}")
    for name, entry in result.get("findings", {}).items():
        lines.append(f"{'auc_pred_bnpp_vs_' + name:32s} {_fmt(entry):>26s} {entry['n']:7d} {entry['n_patients']:9d} "
                     f"{entry['n_boot_skipped']:8d}  ({entry['n_positive']} with {name})")
    for kind, entry in result.get("negatives", {}).items():
        lines.append(f"{'auc_combined_vs_' + kind:32s} {_fmt(entry):>26s} {entry['n']:7d} {entry['n_patients']:9d} "
                     f"{entry['n_boot_skipped']:8d}  (positives against {metrics.NEGATIVE_KINDS[kind]})")
    return "\n".join(lines)


def scores_elsewhere(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None) -> Path | None:
    """evaluate_run's out_dir when it is a folder other than the run's own, else None (the run folder's files)."""
    if out_dir is None or Path(out_dir).resolve() == Path(run_dir).resolve():
        return None
    return Path(out_dir)


def report_text(result: dict, run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> str:
    """The metrics table plus where the evaluation's files went (what the CLIs print); out_dir as evaluate_run's."""
    files = f"{format_table(result)}\nwrote {RunDir.PREDICTIONS}, {RunDir.METRICS}, {ROC_PLOT}, {SCATTER_PLOT} to "
    if scores_elsewhere(run_dir, out_dir) is not None:
        return f"{files}{out_dir} (the run's own evaluation in {run_dir} is unchanged)"
    return f"{files}{run_dir}\nreport: {Path(run_dir) / REPORT_HTML} (and {REPORT_MD})"
