"""The resolution-study section of a run report, rebuilt from the study's resolution.csv / resolution.png.

tools/resolution_study.py registers it in the report of every size's run, so each run's report shows where
it stands among the sizes (the paper's finding: similar AUCs from 64 to 1024 px).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from bnp_cxr.evaluation.report import add_to_reports, outputs_gone
from bnp_cxr.evaluation.study import OUTPUT_FILES

# Shown when present, in this order; the CSV holds every metric.
STUDY_METRICS = ("auc_combined", "auc_bnpp_gt_400", "pearson_r_log10_bnpp", "mae_log10_bnpp")
CLAIM_COVERED = ["Robustness or sensitivity analysis"]


def _entry(row: pd.Series, name: str) -> str:
    value, low, high = (row.get(key) for key in (name, f"{name}_ci_low", f"{name}_ci_high"))
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    if low is None or high is None or not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return f"{float(value):.3f}"
    return f"{float(value):.3f} [{float(low):.3f}, {float(high):.3f}]"


def study_section(run_dir: Path, out: Path) -> dict:
    """Blocks for the study in `out`, naming this run's size; a note instead when its files are gone."""
    table_path, plot_path = out / OUTPUT_FILES["csv"], out / OUTPUT_FILES["plot"]
    blocks: list = [["h", 2, "Resolution study"]]
    if not table_path.is_file():
        blocks.append(outputs_gone(table_path.name, out, "tools/resolution_study.py"))
    else:
        table = pd.read_csv(table_path)
        metrics = [name for name in STUDY_METRICS if name in table]
        rows = [[f"{int(row['size'])} px", int(row["n_images"]), *(_entry(row, name) for name in metrics)]
                for _, row in table.sort_values("size").iterrows()]
        blocks += [["p", f"The same recipe trained and tested at each size ({run_dir.name} is one of them); test "
                         "metrics with patient-bootstrap 95 % CIs. Overlapping CIs mean the sizes are not told "
                         f"apart on this test set. Full table: {table_path}."],
                   ["table", ["size", "test images", *metrics], rows]]
        if plot_path.is_file():
            blocks.append(["figure", str(plot_path.resolve()), "Test metrics across image sizes"])
    return {"blocks": blocks, "claim": CLAIM_COVERED}


def build_section(run_dir: Path, source: dict) -> dict:
    """A report section rebuilt from the study folder its source names (report.SECTION_BUILDERS)."""
    return study_section(run_dir, Path(source["out"]))


def add_study_to_reports(run_dirs: list[str | os.PathLike], out: str | os.PathLike,
                         command: str | None = None) -> list[Path]:
    """Add (or replace) the resolution-study section of each evaluated run's report; the HTML reports written."""
    return add_to_reports(run_dirs, "resolution", {"kind": "resolution", "out": str(Path(out).resolve())}, command)
