"""What does the SimCLR pretraining teach the CPU recipe? A linear probe of frozen features, NIH folds.

The linear evaluation protocol of self-supervised learning (Chen et al., "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020): freeze a network, take its pooled features (the
global_pool layer: 160 values per image for small_cnn) of the train and test images, fit a logistic regression
(sklearn, L2 penalty chosen by 5-fold CV on the train split, features standardised) to the heart-failure label
on the train split, and score its test AUC. Three kinds of frozen network per fold, all the same architecture:

- random_init: freshly initialised (seeds 0-4), no training at all: what pooled random conv features give;
- pretrained_encoder: the fold's SimCLR encoder (work/nih/runs/RECIPE/.../pretrain), before any label;
- finetuned_member: each of the run's ensemble members after fine-tuning (members/member{k}), whose own
  test AUC (member_auc, the model's predictions) is beside it.

It reads the runs and records `bench/nih_recipe.py --size SIZE --recipes RECIPE` made (run that first) and trains
nothing but the probes:

    python bench/nih_linear_probe.py --size 256 --recipe default --name nih_linear_probe_256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402
from nih_recipe import BENCH_ROW, N_FOLDS, REPO  # noqa: E402

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

RANDOM_SEEDS = (0, 1, 2, 3, 4)
KINDS = ("random_init", "pretrained_encoder", "finetuned_member")


def pooled_features(model, records: Path, split: str, size: int, standardize: str):
    """(features [N, C] of the model's global pool, heart-failure label [N]) for the records of a split with a known
    label (the records' `positive`; -1, unknown, is left out as evaluate.py's combined AUC leaves it out)."""
    import keras
    import numpy as np

    from bnp_cxr.models import POOL_NAME
    from bnp_cxr.records.reader import make_dataset

    encoder = keras.Model(model.input, model.get_layer(POOL_NAME).output)
    features, labels = [], []
    for images, _, meta in make_dataset(records, split, size, batch_size=64, deterministic=True, with_metadata=True,
                                        standardize=standardize):
        features.append(np.asarray(encoder(images, training=False)))
        labels.append(meta["positive"].numpy())
    features, labels = np.concatenate(features), np.concatenate(labels)
    known = labels >= 0
    return features[known], labels[known]


def probe_auc(model, records: Path, size: int, standardize: str) -> float:
    """Test AUC of a logistic regression fitted to the frozen model's pooled train features."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = pooled_features(model, records, "train", size, standardize)
    test_x, test_y = pooled_features(model, records, "test", size, standardize)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, scoring="roc_auc", max_iter=5000))
    probe.fit(train_x, train_y)
    return float(roc_auc_score(test_y, probe.decision_function(test_x)))


def fold_rows(run_dir: Path, fold: int) -> list[dict]:
    """One row per frozen network of a fold's run: its kind, seed or member, probe AUC (and member AUC)."""
    import keras

    from bnp_cxr.evaluation.evaluate import read_run_config
    from bnp_cxr.models import build_model, load_model
    from bnp_cxr.workspace import RunDir

    config = read_run_config(run_dir)
    records, size, standardize, backbone = (Path(config["records_dir"]), int(config["size"]), config["standardize"],
                                            config["backbone"])
    architecture = {"model_px": config["model_px"], "widths": config["widths"]}
    member_aucs = json.loads((run_dir / BENCH_ROW).read_text())["row"]["member_aucs"]
    rows = []
    for seed in RANDOM_SEEDS:
        keras.utils.set_random_seed(seed)
        model = build_model(backbone, size, **architecture)
        rows.append({"kind": "random_init", "seed": seed, "probe_auc": probe_auc(model, records, size, standardize)})
    encoder = build_model(backbone, size, weights=str(RunDir(run_dir).encoder), **architecture)
    rows.append({"kind": "pretrained_encoder", "probe_auc": probe_auc(encoder, records, size, standardize)})
    for index, member_auc in enumerate(member_aucs):
        member = load_model(RunDir(run_dir).member(index).model)
        rows.append({"kind": "finetuned_member", "member": index, "member_auc": member_auc,
                     "probe_auc": probe_auc(member, records, size, standardize)})
    return [{"fold": fold, "size_px": size, **row} for row in rows]


def summarise(rows: list[dict]) -> dict:
    """Per kind: mean and sd of the probe AUC over folds and networks (and of the members' own AUC)."""
    summary = {}
    for kind in KINDS:
        aucs = [row["probe_auc"] for row in rows if row["kind"] == kind]
        summary[kind] = {"networks": len(aucs), "probe_auc_mean": statistics.fmean(aucs),
                         "probe_auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else None}
    members = [row["member_auc"] for row in rows if row["kind"] == "finetuned_member"]
    summary["finetuned_member"]["member_auc_mean"] = statistics.fmean(members)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih", help="nih_recipe.py's records and runs")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    parser.add_argument("--recipe", default="default", help="nih_recipe.py recipe whose seed-0 runs to probe")
    parser.add_argument("--name", default="nih_linear_probe", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    rows = []
    for fold in args.folds:
        run_dir = args.work / "runs" / args.recipe / f"size{args.size}_fold{fold}_seed0"
        if not (run_dir / BENCH_ROW).is_file():
            sys.exit(f"error: no finished run at {run_dir}; run bench/nih_recipe.py --size {args.size} "
                     f"--folds {fold} --recipes {args.recipe} first")
        started = time.perf_counter()
        rows.extend(fold_rows(run_dir, fold))
        print(f"fold {fold}: {len(rows)} probes so far, {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    report(args.name, {"recipe": args.recipe, "probe": "sklearn LogisticRegressionCV (L2, Cs=10, 5-fold CV on "
                       "train, roc_auc) on standardised global_pool features; test AUC of the heart-failure label",
                       "summary": summarise(rows)},
           rows, ["fold", "size_px", "kind", "seed", "member", "probe_auc", "member_auc"])


if __name__ == "__main__":
    main()
