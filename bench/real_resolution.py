"""The resolution study on real radiographs: AUC and in-lung attention per image size (Huynh et al., MIDL 2022).

One patient-level split per dataset, one model of the default CPU recipe (tools/train.py --members 1) trained at every
size through the unchanged pipeline (bnp_cxr.evaluation.study.run_study: write_records -> train ->
evaluate_run), then attribution (vanilla gradients, Grad-CAM, XRAI) of the same test images at every size
and the in-lung table with patient-bootstrap 95 % CIs:

- nih: the NIH ChestX-ray14 subset, fold 0 of bench/nih_recipe.py's patient-level folds; lung masks from
  the lung U-Net (tools/train_lungs.py) trained on the Shenzhen masks, i.e. on another hospital's films;
- shenzhen: the Shenzhen TB set with its own split and its manual lung masks.

Stand-in labs (bnp_cxr.data.sources): a pipeline check, not a BNP model. Finished runs are reused, so a
larger size can be added later; records, runs and maps stay under work/ (never commit them).

    python bench/real_resolution.py nih --sizes 64 128 256 512
    python bench/real_resolution.py shenzhen --sizes 64 128 256 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report
from nih_recipe import DEFAULT_DATA as NIH_DATA
from nih_recipe import FOLD_SEED, N_FOLDS, fold_manifests
from shenzhen import DEFAULT_DATA as SHENZHEN_DATA

from bnp_cxr.workspace import WORK_DIR

REPO = Path(__file__).resolve().parents[1]
DATA = {"nih": NIH_DATA, "shenzhen": SHENZHEN_DATA}
LABELS = {"nih": "NIH ChestX-ray14 subset, fold 0 of 5 by patient (bench/nih_recipe.py); heart-failure signs "
                 "(cardiomegaly, edema or effusion) -> stand-in BNPP 2000 pg/mL; lungs: U-Net trained on Shenzhen",
          "shenzhen": "Shenzhen TB set, the manifest's patient-level split; tb -> stand-in BNPP 2000 pg/mL; "
                      "lungs: the manual masks"}
METRICS = ("auc_combined", "pearson_r_log10_bnpp")
IN_LUNG = ("mass_in_lung_fraction", "top_in_lung_fraction", "lung_area_fraction")
STUDY_N_BOOT = 2000  # the runs' test metrics: another count makes run_study evaluate them again


def dataset_manifest(dataset: str, data: Path, work: Path) -> Path:
    """The manifest the study trains on: NIH fold 0 (split column) or the Shenzhen manifest."""
    if dataset == "nih":
        from bnp_cxr.data.sources.nih import write_nih_manifest

        return fold_manifests(write_nih_manifest(data, work / "input").manifest, N_FOLDS, FOLD_SEED)[0]
    from bnp_cxr.data.sources.shenzhen import write_shenzhen_manifest

    return write_shenzhen_manifest(data, work / "input").manifest


def lung_model(path: Path, size: int, epochs: int) -> Path:
    """The lung U-Net at `path`, trained on the Shenzhen masks with tools/train_lungs.py unless finished there.

    Training checkpoints the model to `path` as it goes; only the sidecar, written at the end, marks it finished.
    """
    from bnp_cxr.lungs.train import sidecar_path

    if not sidecar_path(path).is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "train_lungs.py"), "--data", str(SHENZHEN_DATA),
                        "--size", str(size), "--epochs", str(epochs), "--out", str(path), "--verbose", "0"],
                       check=True)
    return path


def train_minutes(work: Path, outcomes) -> dict[int, float]:
    """Training minutes per size: measured when a run trains, remembered in work/train_minutes.json for reuse."""
    path = work / "train_minutes.json"
    minutes = {int(size): value for size, value in json.loads(path.read_text()).items()} if path.is_file() else {}
    for outcome in outcomes:
        if outcome.action == "trained":
            minutes[outcome.size] = round(outcome.seconds / 60, 1)
    path.write_text(json.dumps(minutes, indent=2) + "\n")
    return minutes


def size_rows(outcomes, in_lung, minutes: dict[int, float]) -> list[dict]:
    """One row per size: test metrics and, per method, in-lung mass / top pixels with the chance level."""
    from bnp_cxr.evaluation.study import format_entry

    rows = []
    for outcome in outcomes:
        row = {"size_px": outcome.size, "train_min": minutes.get(outcome.size), "n_test": outcome.metrics["n_images"],
               "epochs": outcome.config["epochs"], "standardize": outcome.config.get("standardize")}
        for name in METRICS:
            entry = outcome.metrics["metrics"][name]
            row[name] = [entry["estimate"], entry["ci_low"], entry["ci_high"]]
            row[f"{name}_text"] = format_entry(entry)
        for _, line in in_lung[in_lung["size"] == outcome.size].iterrows():
            for name in IN_LUNG:
                row[f"{line['method']}_{name}"] = [line[name], line[f"{name}_lo"], line[f"{name}_hi"]]
            row[f"{line['method']}_in_lung_mass_text"] = f"{line['mass_in_lung_fraction']:.2f}"
        rows.append(row)
    return rows


def add_study_arguments(parser: argparse.ArgumentParser, sizes: list[int]) -> None:
    """The dataset, its records / runs folder, the sizes and the NIH lung U-Net: shared with scorecard_real.py."""
    parser.add_argument("dataset", choices=sorted(DATA))
    parser.add_argument("--data", type=Path, help="dataset folder (default: ../shared/data's)")
    parser.add_argument("--work", type=Path, help="records, runs and maps (default: work/resolution_DATASET)")
    parser.add_argument("--sizes", type=int, nargs="+", default=sizes)
    parser.add_argument("--lung-size", type=int, default=256, help="lung U-Net input size (nih)")
    parser.add_argument("--lung-epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)


def study_runs(args: argparse.Namespace, epochs: int | None = None, n_boot: int = STUDY_N_BOOT):
    """(work folder, run_study outcomes per size, lung U-Net path or None): records written and the default recipe
    trained and evaluated at every size, each reused when already done."""
    data, work = args.data or DATA[args.dataset], args.work or REPO / WORK_DIR / f"resolution_{args.dataset}"
    if not data.is_dir():
        sys.exit(f"error: no {args.dataset} data at {data}; pass --data")
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.evaluation.study import run_study
    from bnp_cxr.records.writer import IngestConfig, write_records

    records = work / "records"
    write_records(load_manifest(dataset_manifest(args.dataset, data, work)), records,
                  IngestConfig(sizes=tuple(args.sizes), workers=args.workers, resume=True, progress=False))
    # one model per size, as the paper (the CPU default's ensemble would train each size five times over)
    options = {"records_dir": str(records), "members": 1, **({"epochs": epochs} if epochs else {})}
    outcomes, _ = run_study(args.sizes, options, work / "runs", work / "study", n_boot=n_boot, verbose=0)
    lungs = lung_model(work.parent / "lungs" / f"unet{args.lung_size}.keras", args.lung_size, args.lung_epochs) \
        if args.dataset == "nih" else None
    return work, outcomes, lungs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser, [64, 128, 256, 512])
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--n", type=int, default=32, help="test images explained at every size")
    parser.add_argument("--n-boot", type=int, default=STUDY_N_BOOT)
    parser.add_argument("--name", help="result file bench/results/NAME.json (default: resolution_DATASET)")
    args = parser.parse_args()
    import pandas as pd

    from bnp_cxr.attribution.run import AGGREGATE, AttributionConfig, attribute, run_info

    work, outcomes, lungs = study_runs(args, args.epochs, args.n_boot)
    minutes = train_minutes(work, outcomes)
    attribute([run_info(outcome.run_dir) for outcome in outcomes], work / "attribution",
              AttributionConfig(n_images=args.n, lung_model=str(lungs) if lungs else None, n_boot=args.n_boot,
                                panels=False), progress=False)
    rows = size_rows(outcomes, pd.read_csv(work / "attribution" / AGGREGATE), minutes)
    report(args.name or f"resolution_{args.dataset}",
           {"data": LABELS[args.dataset], "recipe": "default CPU recipe (small_cnn, CLAHE, 20 epochs unless "
                                                    "--epochs)", "attribution_images": args.n,
            "load_average": os.getloadavg()},
           rows, ["size_px", "epochs", "train_min", "n_test", "auc_combined_text", "pearson_r_log10_bnpp_text",
                  "vanilla_in_lung_mass_text", "gradcam_in_lung_mass_text", "xrai_in_lung_mass_text"])


if __name__ == "__main__":
    main()
