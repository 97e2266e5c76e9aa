"""What does the SimCLR pretraining teach the CPU recipe? A linear probe of frozen features, NIH folds.

The linear evaluation protocol of self-supervised learning (Chen et al., "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020): freeze a network, take its pooled features (the
global_pool layer: 160 values per image for small_cnn) of the train and test images, fit a logistic regression
(sklearn, L2 penalty chosen by 5-fold CV on the train split, features standardised) to the heart-failure label
on the train split, and score its test AUC. Three kinds of frozen network per fold, all the same architecture:

- random_init: freshly initialised (seeds 0-4), no training at all: what pooled random conv features give;
- pretrained_encoder: the fold's SimCLR encoder (work/nih/runs/RECIPE/.../pretrain), before any label;
- finetuned_member: each of the run's ensemble members after fine-tuning (members/member{k}), whose own
  test AUC (member_auc, the model's predictions) is beside it;
- lung_unet_encoder: the contracting path of the lung U-Net (tools/train_lungs.py, supervised on the Shenzhen
  lung masks: another hospital's films), the global average of each level's last activation (for the default
  U-Net 8+16+32+64+128+256 values per image), at the records' size. It answers whether initialising from a
  segmentation network trained on real chest anatomy would teach more than SimCLR; beside its probe AUC, the
  row holds the run's ensemble AUC and that of the equal-weight rank average of the two (does it add signal the
  ensemble lacks?).

It reads the runs and records `bench/nih_recipe.py --size SIZE --recipes RECIPE` made (run that first) and trains
nothing but the probes, and the lung U-Net (work/lungs/unet{SIZE}.keras, 30 epochs) when it is not there:

    python bench/nih_linear_probe.py --size 256 --recipe default --name nih_linear_probe_256
    python bench/nih_linear_probe.py --size 256 --recipe views_model_px --name nih_linear_probe_views_256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402
from nih_recipe import BENCH_ROW, N_FOLDS, REPO  # noqa: E402
from real_resolution import lung_model  # noqa: E402

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

RANDOM_SEEDS = (0, 1, 2, 3, 4)
KINDS = ("random_init", "pretrained_encoder", "finetuned_member", "lung_unet_encoder")
LUNG_EPOCHS = 30  # tools/train_lungs.py's default, as bench/real_resolution.py trains it


def pooled_features(features_model, records: Path, split: str, size: int, standardize: str):
    """(features [N, C], heart-failure label [N], image ids) for the records of a split with a known label (the
    records' `positive`; -1, unknown, is left out as evaluate.py's combined AUC leaves it out)."""
    import numpy as np

    from bnp_cxr.records.reader import make_dataset

    features, labels, image_ids = [], [], []
    for images, _, meta in make_dataset(records, split, size, batch_size=64, deterministic=True, with_metadata=True,
                                        standardize=standardize):
        features.append(np.asarray(features_model(images, training=False)))
        labels.append(meta["positive"].numpy())
        image_ids += [image_id.decode() for image_id in meta["image_id"].numpy()]
    features, labels = np.concatenate(features), np.concatenate(labels)
    known = labels >= 0
    return features[known], labels[known], [image_id for image_id, keep in zip(image_ids, known) if keep]


def global_pool(model):
    """The model's global_pool output as a model (the features the ensemble's heads read)."""
    import keras

    from bnp_cxr.models import POOL_NAME

    return keras.Model(model.input, model.get_layer(POOL_NAME).output)


def lung_encoder(lung_model_path: Path, size: int):
    """The lung U-Net's contracting path: the global average of each level's last activation, concatenated."""
    import keras

    from bnp_cxr.lungs import load_lung_model

    unet = load_lung_model(lung_model_path)
    if unet.input_shape[1] != size:
        raise ValueError(f"{lung_model_path}: the lung U-Net reads {unet.input_shape[1]} px, the records are {size} px")
    names = [layer.name for layer in unet.layers if re.fullmatch(r"(down\d+|bottleneck)_relu2", layer.name)]
    if not names:
        raise ValueError(f"{unet.name}: no down<k>_relu2 / bottleneck_relu2 layers; not a bnp_cxr.lungs U-Net")
    pooled = [keras.layers.GlobalAveragePooling2D()(unet.get_layer(name).output) for name in names]
    return keras.Model(unet.input, keras.layers.Concatenate()(pooled))


def probe_scores(features_model, records: Path, size: int, standardize: str):
    """(test image ids, test labels, test scores) of a logistic regression fitted to the frozen train features."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y, _ = pooled_features(features_model, records, "train", size, standardize)
    test_x, test_y, test_ids = pooled_features(features_model, records, "test", size, standardize)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, scoring="roc_auc", max_iter=5000))
    probe.fit(train_x, train_y)
    return test_ids, test_y, probe.decision_function(test_x)


def probe_auc(features_model, records: Path, size: int, standardize: str) -> float:
    """Test AUC of a logistic regression fitted to the frozen model's pooled train features."""
    from sklearn.metrics import roc_auc_score

    _, test_y, scores = probe_scores(features_model, records, size, standardize)
    return float(roc_auc_score(test_y, scores))


def lung_probe_row(lung_features, run_dir: Path, records: Path, size: int) -> dict:
    """The lung U-Net encoder's probe AUC, the run's ensemble AUC and the AUC of their equal-weight rank average."""
    import pandas as pd
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    from bnp_cxr.workspace import RunDir

    # 'none': the [0, 1] window the U-Net was trained on (bnp_cxr.lungs.data.prepare_pair)
    test_ids, test_y, scores = probe_scores(lung_features, records, size, "none")
    predictions = pd.read_csv(RunDir(run_dir).predictions).set_index("image_id").loc[test_ids]
    if not (predictions["positive"].to_numpy() == test_y).all():
        raise ValueError(f"{run_dir}: predictions.csv labels differ from the records' test labels")
    ensemble = predictions["pred_log10_bnpp"].to_numpy()
    return {"kind": "lung_unet_encoder", "probe_auc": float(roc_auc_score(test_y, scores)),
            "ensemble_auc": float(roc_auc_score(test_y, ensemble)),
            "rank_fused_auc": float(roc_auc_score(test_y, rankdata(ensemble) + rankdata(scores)))}


def fold_rows(run_dir: Path, fold: int, lung_features) -> list[dict]:
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
        rows.append({"kind": "random_init", "seed": seed,
                     "probe_auc": probe_auc(global_pool(model), records, size, standardize)})
    encoder = build_model(backbone, size, weights=str(RunDir(run_dir).encoder), **architecture)
    rows.append({"kind": "pretrained_encoder",
                 "probe_auc": probe_auc(global_pool(encoder), records, size, standardize)})
    for index, member_auc in enumerate(member_aucs):
        member = load_model(RunDir(run_dir).member(index).model)
        rows.append({"kind": "finetuned_member", "member": index, "member_auc": member_auc,
                     "probe_auc": probe_auc(global_pool(member), records, size, standardize)})
    if lung_features is not None:
        rows.append(lung_probe_row(lung_features, run_dir, records, size))
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
    lung_rows = [row for row in rows if row["kind"] == "lung_unet_encoder"]
    for key in ("ensemble_auc", "rank_fused_auc") if lung_rows else ():
        summary["lung_unet_encoder"][f"{key}_mean"] = statistics.fmean(row[key] for row in lung_rows)
    return {kind: values for kind, values in summary.items() if values["networks"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "nih", help="nih_recipe.py's records and runs")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    parser.add_argument("--recipe", default="default", help="nih_recipe.py recipe whose seed-0 runs to probe")
    parser.add_argument("--lung-model", type=Path, help="lung U-Net to probe (default: work/lungs/unet{SIZE}.keras, "
                        f"trained by tools/train_lungs.py --epochs {LUNG_EPOCHS} when missing)")
    parser.add_argument("--no-lung-model", dest="lung", action="store_false", help="leave the lung U-Net out")
    parser.add_argument("--name", default="nih_linear_probe", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    lung_features = None  # the U-Net's feature model, built once for every fold
    if args.lung:
        lung_features = lung_encoder(lung_model(args.lung_model or REPO / WORK_DIR / "lungs" / f"unet{args.size}.keras",
                                                args.size, LUNG_EPOCHS), args.size)
    rows = []
    for fold in args.folds:
        run_dir = args.work / "runs" / args.recipe / f"size{args.size}_fold{fold}_seed0"
        if not (run_dir / BENCH_ROW).is_file():
            sys.exit(f"error: no finished run at {run_dir}; run bench/nih_recipe.py --size {args.size} "
                     f"--folds {fold} --recipes {args.recipe} first")
        started = time.perf_counter()
        rows.extend(fold_rows(run_dir, fold, lung_features))
        print(f"fold {fold}: {len(rows)} probes so far, {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    report(args.name, {"recipe": args.recipe, "probe": "sklearn LogisticRegressionCV (L2, Cs=10, 5-fold CV on "
                       "train, roc_auc) on standardised global_pool features; test AUC of the heart-failure label",
                       "summary": summarise(rows)},
           rows, ["fold", "size_px", "kind", "seed", "member", "probe_auc", "member_auc", "ensemble_auc",
                  "rank_fused_auc"])


if __name__ == "__main__":
    main()
