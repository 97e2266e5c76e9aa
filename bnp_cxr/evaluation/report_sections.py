"""The sections of a run report (bnp_cxr.evaluation.report), each a list of blocks (see report_render).

Each section names the CLAIM 2024 items it covers (Checklist for Artificial Intelligence in Medical
Imaging, 2024 update; items by topic); the checklist section lists those a pipeline cannot know as
"for the authors".
"""

from __future__ import annotations

import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from bnp_cxr.evaluation.metrics import NEGATIVE_KINDS
from bnp_cxr.evaluation.report_render import CALIBRATION_PLOT
from bnp_cxr.training.config import SAVED_BEFORE_OPTIONS, TrainConfig

WORST_ERRORS = 5
# Topic -> where this report covers it; "" = for the authors (a pipeline cannot know it).
CLAIM_ITEMS = {
    "Study design (retrospective / prospective) and study goal": "",
    "Data sources": "Data",
    "Eligibility criteria (inclusion / exclusion)": "Data (rejects by reason)",
    "Data preprocessing steps": "Data",
    "De-identification methods": "Data",
    "Handling of missing data": "Data (label rules)",
    "Image acquisition protocol": "",
    "Definition of the reference standard (ground truth)": "Data (label rules)",
    "Rationale for the reference standard": "",
    "Source of the reference standard; annotators and their qualifications": "",
    "Intended sample size and how it was determined": "",
    "How data were assigned to partitions": "Data (splits)",
    "Level at which partitions are disjoint": "Data (splits)",
    "Detailed description of the model (inputs, outputs, architecture)": "Model and training",
    "Software libraries, frameworks and packages": "Provenance",
    "Initialisation of model parameters": "Model and training",
    "Training details: augmentation, hyperparameters, number of models": "Model and training",
    "Method of selecting the final model": "Model and training",
    "Ensembling": "Model and training",
    "Metrics of model performance": "Test metrics",
    "Statistical measures of uncertainty (confidence intervals)": "Test metrics",
    "Robustness or sensitivity analysis": "",
    "Methods for explainability and how they were validated": "",
    "Validation or testing on external data": "",
    "Flow of cases (inclusion and exclusion)": "Data (flow)",
    "Demographic and clinical characteristics of each partition": "",
    "Performance on all data partitions": "",
    "Estimates of diagnostic accuracy and their precision": "Test metrics",
    "Failure analysis of incorrectly classified cases": "Worst errors",
    "Study limitations (bias, uncertainty, generalisability)": "Limitations",
    "Implications for practice and intended clinical use": "",
    "Registration, protocol access and funding": "",
    "Code and data availability": "",
}


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(entry: dict, digits: int = 3) -> str:
    if entry.get("estimate") is None:
        return "n/a"
    return f"{entry['estimate']:.{digits}f} [{_fmt(entry.get('ci_low'), digits)}, {_fmt(entry.get('ci_high'), digits)}]"


def source_kind(facts) -> str:
    """'phantom', 'stand-in' / 'measured' (public dataset with stand-in / measured labs) or 'manifest' (source.json)."""
    return (facts.source or {}).get("kind", "unknown")


def header(facts) -> list:
    metrics = facts.metrics
    kind = source_kind(facts)
    warning = {"phantom": "Data: the synthetic phantom cohort (no patient data). This is a demonstration of the "
                          "pipeline, not a BNP model.",
               "stand-in": "Data: a public dataset with stand-in labs derived from its findings, not measured BNP.",
               "measured": "Data: a public dataset with measured BNP / NT-proBNP paired to the radiographs in time.",
               }.get(kind, "Data: the manifest named under Data; see Limitations.")
    return [["h", 1, f"Run report: {facts.run_dir.name}"],
            ["p", f"{warning} Model `{facts.config.get('backbone', '?')}` at {facts.config.get('size', '?')} px, "
                  f"evaluated on the {metrics.get('split', 'test')} split ({metrics['n_images']} images, "
                  f"{metrics['n_patients']} patients)."]]


def data_section(facts) -> list:
    blocks: list = [["h", 2, "Data"]]
    source = facts.source or {}
    blocks.append(["p", source.get("description") or
                   "The records do not say where their data came from (no source.json beside summary.json)."])
    summary = facts.summary
    if summary is None:
        return blocks + [["p", f"No summary.json in {facts.records_dir}: flow counts unknown."]]
    blocks.append(["p", f"Flow: {summary['rows']} manifest rows -> {summary['written']} written to records, "
                        f"{summary['rejected']} rejected. Records at sizes {summary.get('sizes')} px."])
    reasons = summary.get("reject_reasons", {})
    if reasons:
        blocks.append(["table", ["reject reason", "rows"], [[reason, count] for reason, count in reasons.items()]])
    labs = summary.get("labs", {})
    if labs.get("rows"):
        blocks.append(["p", f"Labs table: {labs['rows']} rows, {labs.get('paired', 0)} paired with a radiograph "
                            f"within +-{_fmt(labs.get('window_hours'), 0)} h, {labs.get('unused', 0)} unused, "
                            f"{labs.get('invalid', 0)} invalid."])
    rows = [[split, c.get("written", 0), c.get("positive", 0), c.get("negative", 0), c.get("unknown", 0)]
            for split, c in summary.get("per_split", {}).items()]
    blocks += [["h", 3, "Splits"],
               ["p", "Splits are drawn by patient: every image of a patient is in one split (disjoint at the patient "
                     "level)."],
               ["table", ["split", "images", "positive", "negative", "unknown"], rows]]
    blocks += _label_rules(facts)
    blocks.append(["p", "Preprocessing: each radiograph is decoded to display convention, windowed by intensity "
                        "percentiles, letterboxed to a square and resized with area averaging; the model input is "
                        f"standardised with `{facts.config.get('standardize', 'none')}`. Patient and image IDs are "
                        "salted pseudonyms (bnp_cxr.data.privacy); no name, MRN or accession number is stored."])
    return blocks


def _label_rules(facts) -> list:
    thresholds = facts.metrics.get("thresholds_pg_ml", {})
    labels = facts.metrics.get("labels", {})
    window = (facts.summary or {}).get("labs", {}).get("window_hours")
    items = [f"positive: BNPP > {_fmt(thresholds.get('bnpp'), 0)} pg/mL or BNP > {_fmt(thresholds.get('bnp'), 0)} "
             "pg/mL (Huynh et al., MIDL 2022)"]
    if window is not None:
        items.append(f"a lab counts for a radiograph when drawn within +-{_fmt(window, 0)} h of it (nearest first)")
    items += [f"{name}: {text}" for name, text in labels.items()]
    items.append("regression targets: log10 BNP and log10 BNPP; a missing test is masked out of the loss; values "
                 "outside the assay range are censored at its limit")
    return [["h", 3, "Label rules and thresholds"], ["list", items]]


def model_section(facts) -> list:
    config = facts.config
    keys = ("backbone", "size", "weights", "epochs", "batch_size", "optimizer", "lr", "schedule", "warmup_epochs",
            "weight_decay", "dropout", "augment", "site_augment", "standardize", "loss", "loss_weights", "keep",
            "mixed_precision", "seed", "members", "train_on_val")
    rows = [[key, _fmt(config.get(key))] for key in keys if key in config]
    # a config.json from before the loss / keep options reads as what that run was trained with
    loss_name = config.get("loss", TrainConfig.loss)
    loss = {"l1": "masked L1", "l2": "masked squared error",
            "l1_balanced": "masked L1, positives and negatives weighing half each"}.get(loss_name, loss_name)
    kept = ("the last epoch" if config.get("keep", SAVED_BEFORE_OPTIONS["keep"]) == "last"
            else "the epoch with the lowest validation loss")
    members = int(config.get("members", SAVED_BEFORE_OPTIONS["members"]))
    if members > 1:
        seed = int(config.get("seed", 0))
        what = (f"Ensemble of {members} `{config.get('backbone')}` models (seeds {seed} to {seed + members - 1}; "
                f"run folders {', '.join(config.get('member_runs', []))}), their predictions averaged; each reads")
        kept = f"the mean of the members, each at {kept}"
    else:
        what = f"One model (no ensemble): `{config.get('backbone')}` reads"
    blocks = [["h", 2, "Model and training"],
              ["p", f"{what} a {config.get('size')} px grayscale radiograph and predicts [log10 BNP, log10 BNPP]; "
                    "weights "
                    f"{'from ' + str(config['weights']) if config.get('weights') else 'randomly initialised'}. "
                    f"Loss: {loss} on the log10 labs. The saved model is {kept}."],
              ["table", ["option", "value"], rows]]
    if facts.history:
        losses = [row.get("val_loss", math.nan) for row in facts.history]
        best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else None
        blocks.append(["p", f"{len(facts.history)} epochs run; best validation loss "
                            f"{_fmt(losses[best]) if best is not None else 'n/a'} at epoch "
                            f"{best + 1 if best is not None else 'n/a'}"
                            f"{' (in-sample: the val images were fitted on too)' if config.get('train_on_val') else ''}"
                            "."])
    return blocks


def metrics_section(facts) -> list:
    metrics = facts.metrics
    boot = metrics["bootstrap"]
    rows = [[name, _ci(entry), entry.get("n", ""), entry.get("n_patients", "")]
            for name, entry in metrics["metrics"].items()]
    rows += [[f"auc_pred_bnpp_vs_{name}", _ci(entry), entry.get("n", ""), entry.get("n_patients", "")]
             for name, entry in metrics.get("findings", {}).items()]
    rows += [[f"auc_combined_vs_{kind} (positives against {NEGATIVE_KINDS[kind]})", _ci(entry), entry.get("n", ""),
              entry.get("n_patients", "")] for kind, entry in metrics.get("negatives", {}).items()]
    return [["h", 2, "Test metrics"],
            ["p", f"{metrics.get('split', 'test')} split, {metrics['n_images']} images of {metrics['n_patients']} "
                  f"patients. {boot['ci_level']:.0%} confidence intervals: {boot['method']} ({boot['n_boot']} "
                  f"resamples, seed {boot['seed']})."],
            ["table", ["metric", "estimate [95 % CI]", "n", "patients"], rows],
            ["figure", "roc.png", "ROC curves with AUC [95 % CI] and Youden points"],
            ["figure", "scatter.png", "Predicted vs true log10 BNPP and BNP"],
            ["figure", CALIBRATION_PLOT, "Calibration: observed vs predicted log10 BNPP per prediction decile"]]


def failures_section(facts, heatmaps: dict[str, str]) -> list:
    table = facts.predictions.copy()
    table["error"] = table["pred_log10_bnpp"] - table["true_log10_bnpp"]
    table = table[np.isfinite(table["error"])]
    worst = table.reindex(table["error"].abs().sort_values(ascending=False).index).head(WORST_ERRORS)
    rows = [[row.image_id, row.patient_id, _fmt(row.true_log10_bnpp, 2), _fmt(row.pred_log10_bnpp, 2),
             f"{row.error:+.2f}", row.positive, "panel below" if row.image_id in heatmaps else "-"]
            for row in worst.itertuples()]
    blocks = [["h", 2, "Worst errors"],
              ["p", f"The {len(rows)} test images with the largest |predicted - true| log10 BNPP (pseudonymous IDs). "
                    "Heatmaps appear for those in the attribution sample."],
              ["table", ["image", "patient", "true", "predicted", "error", "positive", "heatmap"], rows]]
    blocks += [["figure", heatmaps[row.image_id], f"Attribution panel of {row.image_id}"]
               for row in worst.itertuples() if row.image_id in heatmaps]
    return blocks


def limitations_section(facts) -> list:
    kind = source_kind(facts)
    what = {
        "phantom": "The data is the synthetic phantom cohort (bnp_cxr.phantom, docs/phantom.md): drawn radiographs "
                   "whose labs and image findings both follow one simulated severity, with planted confounders. A "
                   "model that scores well here has learned the planted signals; the figures say nothing about "
                   "patients and this is not a BNP model.",
        "stand-in": "The labs are stand-ins derived from a public dataset's findings (tools/make_manifest.py), not "
                    "measured BNP / NT-proBNP: the model predicts those findings on a lab scale, not a biomarker.",
        "measured": "The labs are measured BNP / NT-proBNP of a public dataset (see Data), each paired with a "
                    "radiograph taken within the pairing window; one health system's patients, assays and "
                    "scanners, and only patients in whom a clinician ordered the test.",
        "manifest": "The data is a site manifest (see Data): the authors state here which patients, scanners and "
                    "lab assays it holds and how they were selected.",
    }.get(kind, "The report cannot tell what the data is (the records carry no source.json): state it here.")
    metrics = facts.metrics
    return [["h", 2, "Limitations"],
            ["p", f"{what} The test split holds {metrics['n_images']} images of {metrics['n_patients']} patients from "
                  "the same source as the training data: no external validation, and the confidence intervals "
                  "show how little a small test split pins down. Sensitivity and specificity use the Youden point "
                  "chosen on the test split itself, which flatters them."]]


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not available (not a git checkout)"
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}"


def _versions() -> list[list[str]]:
    names = ("bnp-cxr", "tensorflow", "keras", "numpy", "pandas", "scikit-learn", "scipy", "matplotlib", "pydicom",
             "opencv-python-headless", "saliency")
    rows = [["python", platform.python_version()]]
    for name in names:
        try:
            rows.append([name, metadata.version(name)])
        except metadata.PackageNotFoundError:
            continue
    return rows


def provenance_section(facts) -> list:
    commands = facts.state.get("commands", {})
    data = facts.config.get("data", {})
    seeds = [f"training seed {facts.config.get('seed')}", f"bootstrap seed {facts.metrics['bootstrap']['seed']}"]
    items = [f"git commit: {_git_commit()}",
             f"records: {facts.records_dir} (fingerprint sha256 {data.get('sha256', 'n/a')} over the "
             f"{facts.config.get('size')} px shards)",
             "seeds: " + ", ".join(seeds),
             f"training sessions: {len(facts.config.get('sessions', []))} (started "
             + ", ".join(s.get("started", "?") for s in facts.config.get("sessions", [])) + ")"]
    items += [f"{step}: `{command}`" for step, command in commands.items()]
    items.append(f"this report: `python tools/report.py {facts.run_dir}`")
    return [["h", 2, "Provenance"], ["list", items], ["table", ["package", "version"], _versions()]]


def claim_section(facts, covered_by_sections: dict[str, str]) -> list:
    """The checklist: items covered here (by this module's sections or, per item, the later stage's section
    title in covered_by_sections) and those left for the authors."""
    extra = covered_by_sections
    covered = [[item, where or extra[item]] for item, where in CLAIM_ITEMS.items() if where or item in extra]
    authors = [item for item, where in CLAIM_ITEMS.items() if not where and item not in extra]
    return [["h", 2, "CLAIM 2024 checklist"],
            ["p", "Items of the Checklist for Artificial Intelligence in Medical Imaging (2024 update), by topic, "
                  "that this report covers, and where:"],
            ["table", ["CLAIM item", "section"], covered],
            ["p", "For the authors (a pipeline cannot know these):"],
            ["list", authors]]
