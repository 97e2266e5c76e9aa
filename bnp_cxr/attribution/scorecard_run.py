"""The scorecard over trained runs: the attribution sample of every run scored, written as CSVs and scorecard.png.

Files in the output folder: scorecard_per_image.csv (one row per image, method and size),
scorecard.csv (per method x size: each metric's mean, _lo / _hi patient-bootstrap 95 % CI and _n, plus a
row per method that is not applicable, with the reason), scorecard_costs.csv (seconds and model calls per
metric group and size), scorecard_rank_agreement.csv (phantom only: Spearman rho of each metric's method
ranking with the truth ranking) and scorecard.png.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from bnp_cxr.attribution.run import AttributionConfig, RunInfo, lung_masks, runs_and_sample, write_csv
from bnp_cxr.attribution.sample import load_sample
from bnp_cxr.attribution.scorecard import (ScorecardConfig, ScoredImage, aggregate_scorecard, rank_agreement,
                                           score_run)

PER_IMAGE, TABLE, COSTS, AGREEMENT, FIGURE = ("scorecard_per_image.csv", "scorecard.csv", "scorecard_costs.csv",
                                              "scorecard_rank_agreement.csv", "scorecard.png")


def run_images(info: RunInfo, image_ids: Sequence[str], split: str, lung_model) -> list[ScoredImage]:
    """The sampled images of one run with their lung masks (records, else the lung model, else none)."""
    images = load_sample(info.records_dir, split, info.size, image_ids, standardize=info.standardize)
    masks, _ = lung_masks(images, lung_model)
    return [ScoredImage(image.image_id, image.patient_id, image.image, mask, image.component_mask, image.valid_mask())
            for image, mask in zip(images, masks)]


def write_scorecard(runs: Sequence[RunInfo], out_dir: str | os.PathLike, config: ScorecardConfig = ScorecardConfig(),
                    *, sample: AttributionConfig = AttributionConfig(), lung_model=None) -> dict:
    """Score the sample with every run; write the scorecard files; return their paths and the not-applicable rows."""
    from bnp_cxr.attribution.scorecard_plot import plot_scorecard
    from bnp_cxr.evaluation.evaluate import load_run_model
    from bnp_cxr.workspace import RunDir

    runs, image_ids = runs_and_sample(runs, sample)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, reasons, costs = [], [], []
    for info in runs:
        model = load_run_model(RunDir(info.path).model)
        found, na, cost = score_run(model, run_images(info, image_ids, sample.split, lung_model), info.size, config)
        rows += [{"run": info.name, **row} for row in found]
        reasons += na
        costs += cost
    per_image = pd.DataFrame(rows)
    not_applicable = pd.DataFrame(reasons, columns=["size", "method", "reason"])
    aggregate = aggregate_scorecard(per_image, n_boot=config.n_boot, seed=config.seed) if len(per_image) else \
        pd.DataFrame(columns=["method", "size"])
    write_csv(per_image, out / PER_IMAGE)
    write_csv(pd.concat([aggregate, not_applicable], ignore_index=True), out / TABLE)
    write_csv(pd.DataFrame(costs), out / COSTS)
    written = {"per_image": str(out / PER_IMAGE), "table": str(out / TABLE), "costs": str(out / COSTS),
               "figure": str(plot_scorecard(aggregate, not_applicable, out / FIGURE)),
               "not_applicable": reasons, "images": len(image_ids)}
    agreement = rank_agreement(aggregate) if "truth_ratio" in aggregate else pd.DataFrame()
    if len(agreement):
        write_csv(agreement, out / AGREEMENT)
        written["rank_agreement"] = str(out / AGREEMENT)
    return written
