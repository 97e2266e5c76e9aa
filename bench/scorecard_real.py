"""The attribution scorecard on real radiographs, with the models of bench/real_resolution.py.

Every method of the saliency library (bnp_cxr.attribution.scorecard) on the same --n test images at each
size, through the command a user runs (tools/attribute.py --scorecard, i.e. write_scorecard): localisation
against the lungs (NIH: the lung U-Net of tools/train_lungs.py trained on the Shenzhen masks; Shenzhen: its
manual masks), faithfulness (deletion, insertion, ROAD), model randomisation and stability on --subset of
them. Real images have no known signal location, so the truth ranking of the phantom does not exist here:
the table says where each method's maps fall and how faithful they are to this model, not which is right.

The runs, records and lung U-Net are bench/real_resolution.py's (trained here first if absent, the same
way); outputs stay under work/ (never commit them).

    nice -n 10 python bench/scorecard_real.py nih --sizes 64 128 256
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report
from real_resolution import LABELS, add_study_arguments, study_runs

SHOWN = ("mass_in_lung_fraction", "pointing_game", "otsu_iou", "deletion_auc", "insertion_auc", "road_gap",
         "randomisation_spearman", "max_sensitivity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser, [64, 128, 256])
    parser.add_argument("--n", type=int, default=16, help="test images scored at every size")
    parser.add_argument("--subset", type=int, default=4, help="images for randomisation and stability")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the scorecard's CIs")
    parser.add_argument("--name", help="result file bench/results/NAME.json (default: scorecard_DATASET)")
    args = parser.parse_args()
    import pandas as pd

    from bnp_cxr.attribution.run import AttributionConfig, run_info
    from bnp_cxr.attribution.scorecard import ScorecardConfig
    from bnp_cxr.attribution.scorecard_run import write_scorecard
    from bnp_cxr.evaluation.study import format_entry
    from bnp_cxr.lungs import load_lung_model

    work, outcomes, lung_path = study_runs(args)  # the study's own bootstrap: its evaluated runs are reused as they are
    lungs = load_lung_model(str(lung_path)) if lung_path else None
    started = time.perf_counter()
    written = write_scorecard([run_info(outcome.run_dir) for outcome in outcomes], work / "scorecard",
                              ScorecardConfig(subset=args.subset, n_boot=args.n_boot), lung_model=lungs,
                              sample=AttributionConfig(n_images=args.n, split="test", seed=0))
    seconds = time.perf_counter() - started
    table = pd.read_csv(written["table"])
    scored = table[table["reason"].isna()] if "reason" in table else table
    rows = []
    for _, row in scored.sort_values(["size", "method"]).iterrows():
        entry = {"size": int(row["size"]), "method": row["method"]}
        for name in SHOWN:
            if name in row and pd.notna(row[name]):
                entry[name] = format_entry({"estimate": row[name], "ci_low": row.get(f"{name}_lo"),
                                            "ci_high": row.get(f"{name}_hi")}, digits=2)
        rows.append(entry)
    not_applicable = table[table["reason"].notna()][["size", "method", "reason"]].to_dict("records") \
        if "reason" in table else []
    chance = scored.groupby("size")["lung_area_fraction"].mean().round(3).to_dict() \
        if "lung_area_fraction" in scored else {}
    report(args.name or f"scorecard_{args.dataset}",
           {"data": LABELS[args.dataset], "images_per_size": written["images"], "subset": args.subset,
            "scoring_s": round(seconds, 1), "in_lung_chance_by_size": chance, "not_applicable": not_applicable,
            "runs": "bench/real_resolution.py's default-recipe runs (fold 0 for nih)",
            "load_average": list(os.getloadavg())},
           rows, ["size", "method", *SHOWN])


if __name__ == "__main__":
    main()
