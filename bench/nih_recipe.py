"""Does the CPU recipe learn heart-failure signs from real radiographs? NIH ChestX-ray14, patient-level folds.

The shared NIH subset (../shared/data/nih: 1,124 images, 897 patients) becomes a manifest with stand-in
labs (bnp_cxr.data.sources.nih: cardiomegaly, edema or effusion -> BNPP 2000 pg/mL, else 100; a pipeline
check, not a BNP model) and finding columns. Patients go to K folds (StratifiedGroupKFold, seeded); for
fold k the test split is fold k, val is 1/8 of the other patients, train the rest. Each recipe (a set
of TrainConfig options over the defaults) is trained from scratch on every fold asked for through the
unchanged pipeline (write_records -> train -> evaluate_run) and scored by the test AUC of the combined
label (= heart-failure signs) with a patient-bootstrap CI, plus predicted BNPP against each finding.
Records and runs stay under work/ (never commit them: they derive from the images); a run that finished
with the same options (defaults included) is reused (--fresh retrains it), so a benchmark can grow by
recipes, seeds or folds. Recipe phantom_init first trains one model of the default recipe on a larger
phantom cohort (rendered under work/, several GB of DICOMs) and starts from that model.

The default recipe on a CPU is SimCLR pretraining on the fold's train and val images (training.pretrain; its
minutes count in train_min), then an ensemble (training.ensemble) from that encoder: its row scores the saved
ensemble model, and its member_aucs score each member alone, so one training gives both the ensemble and its
single models. Recipe scratch is the same ensemble without the pretraining.

    python bench/nih_recipe.py --size 128 --recipes default --name nih_ensemble5  # 5-fold CV, mean +- sd
    python bench/nih_recipe.py --size 128 --folds 0 --seeds 0 1 --recipes single keep_best l2 phantom_init \\
        --name nih_ablation                                                      # one split, 2 seeds each

With several --seeds, every (recipe, fold) also gets an "ensemble" row: the mean of the seeds' predicted
log10 BNP / BNPP per image, scored by the same metrics (an ensemble of the seeds' models).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
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
# The recipes measured before training.pretrain became the CPU default train from scratch, as they were measured.
SCRATCH = {"pretrain": "none"}
# TrainConfig options over the defaults; "default" is whatever `python tools/train.py` resolves to on a CPU.
RECIPES: dict[str, dict] = {
    "default": {},  # on a CPU: SimCLR pretraining, then CPU_MEMBERS small CNNs from its encoder (training.ensemble)
    "scratch": SCRATCH,  # the default from scratch: no pretraining (the CPU default before training.pretrain)
    # the default reading the records in full ("size": model_px = --size) instead of at CPU_MODEL_PX
    "full_res": {"model_px": "size", **SCRATCH},
    # the default with wider conv blocks (small_cnn widths 24-160 -> 32-256: 1.4x the training time at 256 px)
    "wide": {"widths": (32, 64, 128, 256), **SCRATCH},
    # single models (members 1): the CPU default before the real-image work (plain window, model.keras = the
    # lowest val loss), then one ingredient each
    "before": {"backbone": "small_cnn", "standardize": "none", "keep": "best", "members": 1, "site_augment": False,
               "model_px": "size", **SCRATCH},
    "single": {"members": 1, **SCRATCH},  # one model of the default recipe (the default before ensembles)
    "clahe": {"backbone": "small_cnn", "standardize": "clahe", "members": 1, **SCRATCH},
    "no_augment": {"augment": False, "members": 1, **SCRATCH},
    "epochs40": {"epochs": 40, "members": 1, **SCRATCH},
    "epochs60": {"epochs": 60, "members": 1, **SCRATCH},
    "adamw": {"optimizer": "adamw", "weight_decay": 1e-4, "members": 1, **SCRATCH},
    "batch16": {"batch_size": 16, "members": 1, **SCRATCH},  # twice the optimiser steps in the same epochs
    "keep_best": {"keep": "best", "members": 1, **SCRATCH},  # model.keras = the lowest val loss, not the last epoch
    "l2": {"loss": "l2", "members": 1, **SCRATCH},  # squared error instead of the paper's L1
    # initialised from the single-model recipe trained on a larger phantom cohort (phantom_checkpoint): its
    # synthetic oedema, effusion and cardiac enlargement as supervised pretraining
    "phantom_init": {"weights": "phantom", "members": 1},
    # the other-site augmentation (records.augment.SITE_AUGMENT, the CPU default since nih_ensemble5_site.json):
    # one model, the ensemble with it (= default, named), and the ensemble without it (the default before)
    "site": {"site_augment": True, "members": 1, **SCRATCH},
    "default_site": {"site_augment": True, **SCRATCH},
    "default_no_site": {"site_augment": False, **SCRATCH},
    # the default with longer SimCLR pretraining (100 passes over the train and val images instead of 60)
    "pretrain100": {"pretrain_epochs": 100},
    "finetune_lr3e-4": {"lr": 3e-4},  # the default fine-tuning its pretrained encoder at a third of the rate
    # the default with auxiliary heads on the 15 NIH finding columns (training.findings, finding BCE weight 1):
    # features that tell heart-failure signs from the pneumonia and consolidation they are confused with
    "finding_heads": {"finding_loss_weight": 1.0},
    "finding_heads_w0.25": {"finding_loss_weight": 0.25},  # the same with a quarter of that weight
    # the default pretraining on milder crops (views of at least 60 % of the image's area instead of 35 %): less
    # invariance to cropping off the costophrenic angles or the thorax's edges, where effusion and the heart's
    # size relative to the chest show (MoCo-CXR, Sowrirajan et al. 2021, left random crops out)
    "pretrain_crop60": {"pretrain_min_crop": 0.6},
    "pretrain_t0.5": {"pretrain_temperature": 0.5},  # NT-Xent at 0.5 (SimCLR's for small batches) instead of 0.2
    # the default fine-tuned with squared error on the log labs instead of the paper's L1: on a binary stand-in
    # (NIH: 2000 or 100 pg/mL) L1's optimum is the median, so a film the model is unsure of scores as a negative,
    # while L2's is the mean, which ranks films by the probability of heart-failure signs
    "l2_ensemble": {"loss": "l2"},
    # the default fine-tuning its members for half the epochs (10): a pretrained start may need fewer passes
    "finetune_epochs10": {"epochs": 10},
    # twice the members at half the epochs each: the default's fine-tuning time, more seeds averaged
    "members10_epochs10": {"members": 10, "epochs": 10},
    # the default fine-tuning its members for 30 epochs: 10 -> 20 epochs gained on every fold (finetune_epochs10)
    "finetune_epochs30": {"epochs": 30},
    # the default fine-tuned on mixup blends (Zhang et al. 2018, alpha 0.2): a regulariser for ~900 labelled films
    "mixup0.2": {"mixup": 0.2},
    # the default fine-tuned with a pairwise ranking term beside L1 (training.ranking, weight 1): the order AUC scores
    "rank_loss": {"rank_loss_weight": 1.0},
    # the default pretraining also on the 566 Shenzhen radiographs (../shared/data/lungs/shenzhen, records under
    # work/shenzhen; another hospital and scanner, labels unread), 40 passes over the ~1,470 images instead of 60 over
    # the ~900 NIH train and val ones: about the same pretraining steps, 60 % more radiographs
    "pretrain_shenzhen": {"pretrain_extra": "shenzhen", "pretrain_epochs": 40},
    # the default fine-tuned with class-balanced L1 (training.losses.MaskedBalancedL1): ~18 % positives no longer
    # pull every unsure film onto the negatives' value
    "l1_balanced": {"loss": "l1_balanced"},
    "pretrain40": {"pretrain_epochs": 40},  # a third less pretraining (the 45 min budget on slower CPUs)
    "train_on_val": {"train_on_val": True},  # the default also fitting the val images (keep last: val picks nothing)
    "hold_out_val": {"train_on_val": False},  # the default, named: paired against train_on_val (--encoder-from)
    "dropout0": {"dropout": 0.0}, "dropout0.5": {"dropout": 0.5},  # dropout before the output (default 0.2)
    # pretraining views made at model_px (the default since nih_views_model_px_256.json) / at --size (before)
    "views_model_px": {"pretrain_view_res": "model"}, "views_input": {"pretrain_view_res": "input"},
}
# The pretraining cohort of phantom_init: 1,600 full-size phantom DICOMs under work/ (several GB).
PHANTOM_PRETRAIN = {"n_images": 1600, "n_patients": 1400, "seed": 1}
SHENZHEN_DATA = REPO.parent / "shared" / "data" / "lungs" / "shenzhen"
FINDINGS = ("cardiomegaly", "edema", "effusion")
BENCH_ROW = "bench_row.json"  # in a finished run folder: its options and result row, for reuse


def read_manifest(manifest: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a manifest CSV."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_split_manifest(path: Path, columns: list[str], rows: list[dict], split) -> Path:
    """`rows` with a split column (one value per row) as the manifest CSV `path`."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, "split"])
        writer.writeheader()
        writer.writerows({**row, "split": value} for row, value in zip(rows, split))
    return path


def fold_manifests(manifest: Path, n_folds: int, seed: int) -> list[Path]:
    """manifest_fold{k}.csv beside `manifest`: its rows with a split column (test = fold k, patient-level)."""
    import numpy as np
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    columns, rows = read_manifest(manifest)
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
        paths.append(write_split_manifest(manifest.with_name(f"manifest_fold{k}.csv"), columns, rows, split))
    return paths


def fold_records(manifest: Path, out: Path, size: int, workers: int) -> Path:
    """Records of one fold's manifest at `size` (complete ones are reused)."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    write_records(load_manifest(manifest), out, IngestConfig(sizes=(size,), workers=workers, resume=True,
                                                             progress=False))
    return out


def phantom_checkpoint(work: Path, size: int, workers: int) -> Path:
    """model.keras of the default recipe trained on the PHANTOM_PRETRAIN cohort at `size` (made once, then reused)."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.phantom.cohort import generate_cohort
    from bnp_cxr.phantom.config import CohortConfig
    from bnp_cxr.records.writer import IngestConfig, write_records
    from bnp_cxr.training import make_config, train
    from bnp_cxr.workspace import RunDir

    cohort, records = work / "phantom_pretrain" / "cohort", work / "phantom_pretrain" / "records"
    run_dir = RunDir(work / "phantom_pretrain" / f"runs{size}")
    generate_cohort(cohort, CohortConfig(**PHANTOM_PRETRAIN), workers=workers, progress=False)  # idempotent
    write_records(load_manifest(cohort / "manifest.csv", cohort / "labs.csv"), records,
                  IngestConfig(sizes=(size,), workers=workers, resume=True, progress=False))
    # resume: a finished run trains nothing, an interrupted one goes on
    train(make_config({"records_dir": str(records), "size": size, "run_dir": str(run_dir.path), "members": 1,
                       "pretrain": "none"},
                      resume=True),
          verbose=0, log=lambda _: None)
    return run_dir.model


def shenzhen_records(size: int, workers: int) -> Path:
    """Records of the shared Shenzhen set at `size` under work/shenzhen (bench/shenzhen.py's, made once)."""
    from shenzhen import ensure_records

    if not SHENZHEN_DATA.is_dir():
        sys.exit(f"error: recipe pretrain_shenzhen needs the Shenzhen set at {SHENZHEN_DATA}")
    return ensure_records(SHENZHEN_DATA, REPO / WORK_DIR / "shenzhen", size, workers)


def run_recipe(name: str, records: Path, run_dir: Path, size: int, fold: int, seed: int, args) -> dict:
    """Train one recipe on a fold and evaluate it on the fold's test split; one result row.

    A run that finished with the same options on the same records (its bench_row.json) is reused unless
    --fresh; any other content of run_dir is deleted first, so a row always comes from one complete training.
    """
    from bnp_cxr.evaluation.evaluate import evaluate_run
    from bnp_cxr.training import make_config, resolve, train
    from bnp_cxr.training.config import gpus_visible
    from bnp_cxr.training.loop import data_fingerprint
    from bnp_cxr.workspace import RunDir

    options = {"records_dir": str(records), "size": size, "seed": seed, "run_dir": str(run_dir),
               **({"epochs": args.epochs} if args.epochs else {}), **RECIPES[name]}
    if options.get("weights") == "phantom":
        options["weights"] = str(phantom_checkpoint(args.work, size, args.workers))
    source = args.work / "runs" / args.encoder_from / run_dir.name if args.encoder_from else None
    if source:  # that run's pretrained encoder as --weights: the same start, without pretraining again
        encoder = RunDir(source).encoder
        if not encoder.is_file():
            sys.exit(f"error: --encoder-from {args.encoder_from}: no encoder at {encoder}")
        options.update(weights=str(encoder), pretrain="none")
    if options.get("model_px") == "size":
        options["model_px"] = size
    if options.get("pretrain_extra") == "shenzhen":
        options["pretrain_extra"] = (str(shenzhen_records(size, args.workers)),)
    # Every option with the defaults filled in, and the architecture's resolution and widths resolved (a run saved
    # before those options read its records in full, with the widths of then): a run trained otherwise is not reused.
    config = make_config(options)
    resolved = resolve(config, gpus_visible())[0]
    config = dataclasses.replace(config, model_px=resolved.model_px, widths=resolved.widths)
    key = {"config": config.to_json(), "n_boot": args.n_boot,
           "records_sha256": data_fingerprint(records, size)["sha256"]}
    saved = run_dir / BENCH_ROW
    if saved.is_file() and not args.fresh:
        document = json.loads(saved.read_text())
        if same_run(document, key):
            row = {**document["row"], "recipe": name, "fold": fold, **pretrain_minutes(run_dir)}
            if "auc_vs_clear" not in row:  # scored before these columns: from its predictions, once
                import pandas as pd

                row.update(negative_scores(negatives_of(pd.read_csv(RunDir(run_dir).predictions), args.n_boot)))
            return row
    if run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    result = train(config, verbose=0, log=lambda _: None)
    train_min = (time.perf_counter() - started) / 60
    evaluation = evaluate_run(run_dir, records, split="test", n_boot=args.n_boot)
    row = {"recipe": name, "fold": fold, "seed": seed, "size_px": size, "model_px": result.config.model_px,
           "epochs": result.config.epochs,
           "standardize": result.config.standardize, "keep": result.config.keep, "loss": result.config.loss,
           "pretrain": result.config.pretrain,
           "members": result.config.members, "train_min": round(train_min, 1), **pretrain_minutes(run_dir),
           **score_row(evaluation)}
    if source:  # train_min then lacks the pretraining that run paid for
        row.update(encoder_from=args.encoder_from, **pretrain_minutes(source))
        row["whole_min"] = round(train_min + row["pretrain_min"], 1)
    if result.config.members > 1:  # each member alone too: single models and their ensemble from one training
        row["member_aucs"] = [score_row(evaluate_run(RunDir(run_dir).member(k).path, records, split="test",
                                                     n_boot=args.n_boot))["auc"]
                              for k in range(result.config.members)]
    saved.write_text(json.dumps({**key, "row": row}, indent=2) + "\n")
    return row


def pretrain_minutes(run_dir: Path) -> dict:
    """The minutes of a run's own pretraining (part of its train_min), from its encoder record; {} without one."""
    from bnp_cxr.workspace import RunDir

    record = RunDir(run_dir).encoder_key
    return {"pretrain_min": json.loads(record.read_text())["minutes"]} if record.is_file() else {}


def same_run(document: dict, key: dict) -> bool:
    """Whether a bench_row.json document was trained and scored as `key` asks: as TrainConfigs (an option added
    since counts as what the run had) with paths relative to the run (run_relative: another checkout's work/ too)."""
    from bnp_cxr.training.config import TrainConfig
    from bnp_cxr.training.run_paths import run_relative

    stored = document.get("config")
    if not isinstance(stored, dict) or run_relative(TrainConfig.from_json(stored)) != run_relative(
            TrainConfig.from_json(key["config"])):
        return False
    return all(document.get(field) == value for field, value in key.items() if field != "config")


def score_row(evaluation: dict) -> dict:
    """The result columns of one metrics.json dict: test AUC of the combined label with its CI, per finding, and
    against each kind of negative (negative_scores)."""
    from bnp_cxr.evaluation.study import format_entry

    auc = evaluation["metrics"]["auc_combined"]
    row = {"n_test": evaluation["n_images"], "auc": auc["estimate"], "auc_ci": [auc["ci_low"], auc["ci_high"]],
           "auc_text": format_entry(auc)}
    for finding in FINDINGS:
        row[f"auc_{finding}"] = evaluation.get("findings", {}).get(finding, {}).get("estimate")
    return {**row, **negative_scores(evaluation.get("negatives", {}))}


def negative_scores(negatives: dict) -> dict:
    """auc_vs_clear / auc_vs_other_findings: the point estimates of a metrics.json "negatives" dict."""
    return {f"auc_vs_{kind}": entry["estimate"] for kind, entry in negatives.items()}


def negatives_of(table, n_boot: int) -> dict:
    """evaluate_run's "negatives" for a predictions table: positives against clear and other-finding negatives."""
    from bnp_cxr.evaluation import metrics
    from bnp_cxr.workspace import FINDINGS as FINDING_COLUMNS

    return metrics.negative_kind_aucs(table, [name for name in FINDING_COLUMNS if name in table], n_boot=n_boot)


def mean_predictions(prediction_files: list[Path]):
    """The first predictions.csv with predicted log10 BNP / BNPP averaged over every file (the same test images)."""
    import pandas as pd

    tables = [pd.read_csv(path).set_index("image_id") for path in prediction_files]
    table = tables[0].copy()
    for column in ("pred_log10_bnp", "pred_log10_bnpp"):
        table[column] = sum(other.loc[table.index, column] for other in tables) / len(tables)
    return table.reset_index()


def table_scores(table, n_boot: int) -> dict:
    """score_row of a predictions table: the metrics and finding AUCs evaluate_run would report for it."""
    from bnp_cxr.evaluation import metrics

    evaluation = metrics.compute_metrics(table, n_boot=n_boot)
    evaluation["findings"] = metrics.finding_aucs(table, [name for name in FINDINGS if name in table], n_boot=n_boot)
    evaluation["negatives"] = negatives_of(table, n_boot)
    return score_row(evaluation)


def ensemble_row(run_dirs: list[Path], n_boot: int) -> dict:
    """Score the mean prediction of several runs (an ensemble of their models) on the same test images."""
    from bnp_cxr.workspace import RunDir

    return table_scores(mean_predictions([RunDir(run_dir).predictions for run_dir in run_dirs]), n_boot)


def summarise(rows: list[dict]) -> dict:
    """Per recipe: single models and seed ensembles, mean and sd of the test AUC, training minutes per model."""
    summary = {}
    for name in dict.fromkeys(row["recipe"] for row in rows):
        single = [row for row in rows if row["recipe"] == name and row["seed"] != "ensemble"]
        ensembles = [row["auc"] for row in rows if row["recipe"] == name and row["seed"] == "ensemble"]
        aucs = [row["auc"] for row in single]
        summary[name] = {"models": len(aucs), "auc_mean": statistics.fmean(aucs),
                         "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else None,
                         "train_min_mean": statistics.fmean(row["train_min"] for row in single)}
        pretraining = [row["pretrain_min"] for row in single if "pretrain_min" in row]
        if pretraining:  # part of train_min
            summary[name]["pretrain_min_mean"] = statistics.fmean(pretraining)
        whole = [row["whole_min"] for row in single if "whole_min" in row]
        if whole:  # the encoder came from another run (--encoder-from): train_min + its pretraining
            summary[name]["whole_min_mean"] = statistics.fmean(whole)
        members = [auc for row in single for auc in row.get("member_aucs", [])]
        if members:  # an ensemble recipe: its members scored alone
            summary[name].update({"member_models": len(members), "member_auc_mean": statistics.fmean(members),
                                  "member_auc_sd": statistics.stdev(members) if len(members) > 1 else None})
        if ensembles:
            summary[name].update({"ensembles": len(ensembles), "ensemble_auc_mean": statistics.fmean(ensembles),
                                  "ensemble_auc_sd": statistics.stdev(ensembles) if len(ensembles) > 1 else None})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NIH folder (labels.csv or Data_Entry)")
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih", help="manifest, records and runs")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)), help="which of the 5 folds")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["before", "default"])
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (default: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one model per seed; several: + ensemble")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--fresh", action="store_true", help="retrain runs that finished with the same options")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--encoder-from", metavar="RECIPE",
                        help="start each run from that recipe's pretrained encoder of the same fold (--weights) "
                             "instead of pretraining again; rows add its minutes as pretrain_min and whole_min")
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
            run_dirs = [args.work / "runs" / name / f"size{args.size}_fold{fold}_seed{seed}" for seed in args.seeds]
            for seed, run_dir in zip(args.seeds, run_dirs):
                rows.append(run_recipe(name, records, run_dir, args.size, fold, seed, args))
                print(f"{name} fold {fold} seed {seed}: AUC {rows[-1]['auc_text']} in {rows[-1]['train_min']} min",
                      flush=True)
            if len(run_dirs) > 1:
                rows.append({"recipe": name, "fold": fold, "seed": "ensemble", "size_px": args.size,
                             **ensemble_row(run_dirs, args.n_boot)})
                print(f"{name} fold {fold} ensemble of {len(run_dirs)}: AUC {rows[-1]['auc_text']}", flush=True)
    report(args.name, {"data": "NIH ChestX-ray14 subset (../shared/data/nih); stand-in labs: cardiomegaly, edema "
                               "or effusion -> BNPP 2000 / BNP 500 pg/mL, else 100 / 30; a pipeline check, not a "
                               "BNP model", "folds": f"{N_FOLDS}-fold StratifiedGroupKFold by patient, seed "
                                                     f"{FOLD_SEED}; val {VAL_FRACTION:g} of the other patients",
                       "recipes": {name: RECIPES[name] for name in args.recipes}, "seeds": args.seeds,
                       "summary": summarise(rows), "load_average": os.getloadavg()},
           rows, ["recipe", "fold", "seed", "size_px", "model_px", "members", "epochs", "standardize", "keep",
                  "pretrain", "train_min", "pretrain_min", "whole_min", "n_test", "auc_text", "auc_cardiomegaly",
                  "auc_edema", "auc_effusion", "auc_vs_clear", "auc_vs_other_findings"])


if __name__ == "__main__":
    main()
