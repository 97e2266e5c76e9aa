"""In-lung attention on real radiographs: Shenzhen TB set, manual lung masks, one model per size.

For each size: records (bench/shenzhen.py's manifest with the Stirenko et al. 2018 masks in
lung_mask_path) and a small CNN trained from scratch on the stand-in labs (tb=1 -> BNPP 2000 pg/mL;
a pipeline check, not a BNP model), reused when its folder already holds a model. Then
bnp_cxr.attribution.run.attribute on the test split (vanilla gradients, Grad-CAM, XRAI) and the
in-lung table: positive attribution mass inside the manual lung masks, the share of the top 10 %
pixels inside them, and the lung area fraction (chance), with patient-bootstrap 95 % CIs. Everything
derived stays in --work (never commit it: it derives from the images).

    python bench/shenzhen_attention.py                       # 64 128 256 px, 30 epochs, all test images
    python bench/shenzhen_attention.py --sizes 128 --epochs 10 --n 16
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402
from shenzhen import ensure_records, parse_with_data, run_seed, shenzhen_parser  # noqa: E402

from bnp_cxr.workspace import RunDir  # noqa: E402

METRICS = ("mass_in_lung_fraction", "top_in_lung_fraction", "lung_area_fraction")


def trained_run(records: Path, run_dir: Path, size: int, epochs: int, seed: int, batch_size: int,
                n_boot: int) -> dict:
    """The run at run_dir, trained (and evaluated) unless it already holds a model."""
    run = RunDir(run_dir)
    if run.model.is_file() and run.metrics.is_file():
        metrics = json.loads(run.metrics.read_text())["metrics"]
        return {"size_px": size, "auc_bnpp_gt_400": metrics["auc_bnpp_gt_400"]["estimate"], "train_s": None}
    return run_seed(records, run_dir, size, epochs, seed, batch_size, n_boot)


def main() -> None:
    from bnp_cxr.attribution.methods import METHODS

    parser = shenzhen_parser(__doc__, "shenzhen_attention")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1000, help="test images to explain (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parse_with_data(parser)

    import pandas as pd

    from bnp_cxr.attribution.run import AGGREGATE, AttributionConfig, attribute, run_info

    runs_root = args.work / f"runs_attention_e{args.epochs}_seed{args.seed}"
    trained = []
    for size in args.sizes:
        records = ensure_records(args.data, args.work, size, args.workers)
        trained.append(trained_run(records, runs_root / f"size{size}", size, args.epochs, args.seed,
                                   args.batch_size, args.n_boot))
    out = args.work / "attribution"
    started = time.perf_counter()
    config = AttributionConfig(methods=tuple(args.methods), n_images=args.n, n_boot=args.n_boot)
    attribute([run_info(runs_root / f"size{size}") for size in args.sizes], out, config, progress=True)
    attribution_s = time.perf_counter() - started
    aggregate = pd.read_csv(out / AGGREGATE)
    auc_of = {row["size_px"]: row["auc_bnpp_gt_400"] for row in trained}
    rows = []
    for _, entry in aggregate.iterrows():
        row = {"size_px": int(entry["size"]), "method": entry["method"], "n_images": int(entry["n_images"]),
               "test_auc_bnpp": round(float(auc_of[int(entry["size"])]), 3)}
        for name in METRICS:
            row[name] = float(entry[name])
            row[f"{name}_ci"] = [float(entry[f"{name}_lo"]), float(entry[f"{name}_hi"])]
            row[f"{name}_text"] = f"{entry[name]:.2f} [{entry[f'{name}_lo']:.2f}, {entry[f'{name}_hi']:.2f}]"
        row["mass_ratio_to_chance"] = round(row["mass_in_lung_fraction"] / row["lung_area_fraction"], 2)
        rows.append(row)
    report(args.name, {"data": "Shenzhen TB test split, manual lung masks (Stirenko et al. 2018); stand-in labs "
                               "tb=1 -> BNPP 2000 pg/mL, a pipeline check, not a BNP model",
                       "backbone": "small_cnn", "epochs": args.epochs, "seed": args.seed,
                       "attribution_s": round(attribution_s, 1), "outputs": str(out)},
           rows, ["size_px", "method", "n_images", "test_auc_bnpp", "mass_in_lung_fraction_text",
                  "top_in_lung_fraction_text", "lung_area_fraction_text", "mass_ratio_to_chance"])


if __name__ == "__main__":
    main()
