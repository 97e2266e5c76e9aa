"""The attribution scorecard on the phantom: seconds and model calls per metric, and how each metric ranks the methods.

A small phantom cohort (CohortConfig.small with --patients / --images-total) is written as records at
--sizes, a small CNN is trained per size (--epochs, the CPU recipe otherwise), and the scorecard
(bnp_cxr.attribution.scorecard, every method of ALL_METHODS) scores --images training-split images per size,
randomisation and stability on the first --subset of them. Per size and metric group: seconds and model
calls; per size and metric: the Spearman rho of the metric's method ranking (best first) with the truth
ranking (positive mass on the lung-signal components over their area, bnp_cxr.attribution.localisation).

    nice -n 10 python bench/scorecard.py                                   # 16 images x 64/128/256
    nice -n 10 python bench/scorecard.py --images 6 --subset 2 --randomisation-steps 2
    nice -n 10 python bench/scorecard.py --ig-steps-only       # --ig-steps auto against 100 steps

--ig-steps-only times the library's integrated gradients (black baseline, --batch-size steps per call) of
the same images at 100 steps and at the steps `--ig-steps auto` chooses (the fewest of
AUTO_IG_STEPS whose completeness gap is below 1 % on the first --subset images), into
bench/results/scorecard_ig_steps.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common import report

from bnp_cxr.workspace import WORK_DIR


def prepare_runs(root: Path, sizes: list[int], args: argparse.Namespace) -> list:
    """Cohort, records and one trained small-CNN run per size under root (reused when present)."""
    from bnp_cxr.attribution.run import run_info
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.phantom import CohortConfig, generate_cohort
    from bnp_cxr.records.writer import IngestConfig, write_records
    from bnp_cxr.training.config import TrainConfig
    from bnp_cxr.training.loop import train
    from bnp_cxr.workspace import RunDir

    cohort = root / "cohort"
    generate_cohort(cohort, CohortConfig.small(n_patients=args.patients, n_images=args.images_total), workers=1,
                    progress=False)
    records = root / "records"
    if not (records / "summary.json").is_file():
        write_records(load_manifest(cohort / "manifest.csv", cohort / "labs.csv"), records,
                      IngestConfig(sizes=tuple(sizes), shard_size=64, progress=False))
    runs = []
    for size in sizes:
        run = RunDir.for_size(size, root / "runs")
        if not run.is_trained():
            # model_px = size: the scorecard compares sizes, so each model reads its records in full, from scratch
            train(TrainConfig(records_dir=str(records), size=size, epochs=args.epochs, batch_size=16,
                              run_dir=str(run.path), seed=size, model_px=size, pretrain="none"), verbose=0,
                  log=lambda text: None)
        runs.append(run_info(run.path, records))
    return runs


def scored_images(info, args: argparse.Namespace) -> list:
    """The run's sample as ScoredImage rows (records' lung and component masks)."""
    from bnp_cxr.attribution.run import AttributionConfig, sample_ids
    from bnp_cxr.attribution.sample import load_sample
    from bnp_cxr.attribution.scorecard import ScoredImage

    ids = sample_ids([info], AttributionConfig(n_images=args.images, split=args.split, seed=0))
    return [ScoredImage(s.image_id, s.patient_id, s.image, s.lung_mask, s.component_mask, s.valid_mask())
            for s in load_sample(info.records_dir, args.split, info.size, ids, standardize=info.standardize)]


def ig_steps_rows(runs: list, args: argparse.Namespace) -> list[dict]:
    """Per size: the steps --ig-steps auto chooses, its completeness gap, and IG seconds at 100 vs auto steps."""
    from bnp_cxr.attribution.callbacks import ModelGradients
    from bnp_cxr.attribution.library_methods import auto_ig_steps, completeness_gap, library_maps
    from bnp_cxr.evaluation.evaluate import load_run_model
    from bnp_cxr.workspace import RunDir

    rows = []
    for info in runs:
        batch = np.stack([image.image for image in scored_images(info, args)])
        gradients = ModelGradients(load_run_model(RunDir(info.path).model), "bnpp")
        library_maps("ig", batch[:1], gradients, ig_steps=8)  # trace the compiled gradient once, outside the clocks
        started = time.perf_counter()
        steps, gap = auto_ig_steps(gradients, batch[:max(args.subset, 1)])
        choose_s = time.perf_counter() - started
        seconds = {}
        for count in (100, steps):
            started = time.perf_counter()
            library_maps("ig", batch, gradients, ig_steps=count)
            seconds[count] = time.perf_counter() - started
        gap_100 = max(completeness_gap(gradients, image, 100) for image in batch[:max(args.subset, 1)])
        rows.append({"size": info.size, "images": len(batch), "auto_steps": steps, "auto_gap": gap,
                     "gap_at_100": gap_100, "choose_s": choose_s, "ig_100_s": seconds[100],
                     "ig_auto_s": seconds[steps], "saved_s": seconds[100] - seconds[steps] - choose_s})
    return rows


def report_ig_steps(args: argparse.Namespace) -> None:
    """bench/results/scorecard_ig_steps.json: --ig-steps auto against 100 steps per size."""
    rows = ig_steps_rows(prepare_runs(args.root, args.sizes, args), args)
    report("scorecard_ig_steps", {"sizes": args.sizes, "images_per_size": args.images, "subset": args.subset,
                                  "tolerance": 0.01, "load_average": list(os.getloadavg())},
           [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows],
           ["size", "images", "auto_steps", "auto_gap", "gap_at_100", "choose_s", "ig_100_s", "ig_auto_s", "saved_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--images", type=int, default=16, help="scored images per size")
    parser.add_argument("--subset", type=int, default=4, help="images for randomisation and stability")
    parser.add_argument("--randomisation-steps", type=int, default=None, help="layer groups (default: all)")
    parser.add_argument("--stability-samples", type=int, default=3)
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--images-total", type=int, default=48, help="phantom cohort size")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--split", default="train")
    parser.add_argument("--root", type=Path, default=WORK_DIR / "bench_scorecard")
    parser.add_argument("--ig-steps-only", action="store_true", help="only time --ig-steps auto against 100 steps")
    args = parser.parse_args()
    if args.ig_steps_only:
        report_ig_steps(args)
        return

    import keras
    import pandas as pd

    from bnp_cxr.attribution.scorecard import (SCORE_METRICS, ScorecardConfig, aggregate_scorecard, rank_agreement,
                                               score_run)
    from bnp_cxr.evaluation.evaluate import load_run_model
    from bnp_cxr.workspace import RunDir

    started = time.perf_counter()
    runs = prepare_runs(args.root, args.sizes, args)
    prepared = time.perf_counter() - started
    config = ScorecardConfig(subset=args.subset, randomisation_steps=args.randomisation_steps,
                             stability_samples=args.stability_samples)
    per_image, reasons, costs = [], [], []
    scoring_started = time.perf_counter()
    for info in runs:
        images = scored_images(info, args)
        model = load_run_model(RunDir(info.path).model)
        keras.utils.set_random_seed(0)
        rows, na, cost = score_run(model, images, info.size, config)
        print(f"{info.size} px scored in {sum(row['seconds'] for row in cost):.0f} s", flush=True)
        per_image += rows
        reasons += na
        costs += cost
    scoring_s = time.perf_counter() - scoring_started
    frame = pd.DataFrame(per_image)
    aggregate = aggregate_scorecard(frame, n_boot=config.n_boot, seed=config.seed)
    agreement = rank_agreement(aggregate)
    means = aggregate[["method", "size", *[name for name in SCORE_METRICS if name in aggregate]]]
    report("scorecard", {
        "sizes": args.sizes, "images_per_size": args.images, "subset": args.subset, "split": args.split,
        "randomisation_steps": args.randomisation_steps, "stability_samples": args.stability_samples,
        "stability_radius": config.stability_radius, "road_fractions": list(config.road_fractions),
        "curve_steps": config.curve_steps, "epochs": args.epochs, "methods": list(config.methods),
        "not_applicable": reasons, "prepare_s": round(prepared, 1), "scoring_s": round(scoring_s, 1),
        "load_average": list(os.getloadavg()),
        "method_means": means.round(4).replace({np.nan: None}).to_dict("records"),
        "rank_agreement": agreement.round(3).replace({np.nan: None}).to_dict("records"),
    }, [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()} for row in costs],
        ["size", "metric", "seconds", "model_calls", "images"])


if __name__ == "__main__":
    main()
