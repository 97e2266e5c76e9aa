"""The attribution section of a run report, built from what tools/attribute.py and tools/sanity_check.py wrote.

Reads files only (in_lung.csv, in_lung_per_image.csv, in_lung_trend.png, panels/, scorecard files, the sanity
check's sanity.csv / sanity.png), so evaluation does not depend on the attribution stage's code.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from bnp_cxr.evaluation.report import add_section

IN_LUNG, PER_IMAGE, TREND = "in_lung.csv", "in_lung_per_image.csv", "in_lung_trend.png"
SANITY_CSV, SANITY_PLOT = "sanity.csv", "sanity.png"
IN_LUNG_COLUMNS = ("mass_in_lung_fraction", "top_in_lung_fraction", "lung_area_fraction")
CLAIM_COVERED = ["Methods for explainability and how they were validated"]


def _value(row: pd.Series, name: str) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    low, high = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _in_lung_blocks(out: Path, run_name: str, size: int) -> list:
    table = pd.read_csv(out / IN_LUNG)
    if "size" in table:
        table = table[table["size"] == size]
    rows = [[row["method"], int(row["n_images"]), *(_value(row, name) for name in IN_LUNG_COLUMNS)]
            for _, row in table.iterrows()]
    blocks = [["p", f"In-lung attention of {run_name} ({size} px), mean over the sample with patient-bootstrap 95 % "
                    "CIs. `lung_area_fraction` is the chance level: a map with no preference for the lungs scores "
                    "it on the mass share."],
              ["table", ["method", "images", *IN_LUNG_COLUMNS], rows]]
    if (out / TREND).is_file():
        blocks.append(["figure", str((out / TREND).resolve()), "In-lung attention across image sizes"])
    return blocks


def _sanity_blocks(sanity_dir: Path) -> list:
    frame = pd.read_csv(sanity_dir / SANITY_CSV)
    columns = list(frame.columns)[:8]
    rows = [[f"{value:.3f}" if isinstance(value, float) else value for value in row]
            for row in frame[columns].itertuples(index=False)]
    blocks = [["h", 3, "Model-randomisation sanity check"],
              ["p", "Similarity of each method's maps before and after randomising the model's layers from the top "
                    "(Adebayo et al., 2018): maps that stay similar do not depend on what the model learned."],
              ["table", columns, rows]]
    if (sanity_dir / SANITY_PLOT).is_file():
        blocks.append(["figure", str((sanity_dir / SANITY_PLOT).resolve()), "Sanity check: similarity vs layers "
                                                                           "randomised"])
    return blocks


def _scorecard_blocks(out: Path) -> list:
    """Any scorecard the attribution wrote (a Markdown or CSV file named scorecard*), shown as it is."""
    blocks = []
    for path in sorted(out.glob("scorecard*.csv")):
        frame = pd.read_csv(path)
        blocks += [["h", 3, f"Scorecard ({path.name})"],
                   ["table", list(frame.columns), [list(map(str, row)) for row in frame.itertuples(index=False)]]]
    return blocks


def attribution_section(run_dir: Path, out: Path, sanity_dir: Path | None, command: str | None) -> dict:
    """The section (blocks, CLAIM items, heatmap panel per image ID) for one explained run."""
    size, name = int(json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["size"]), run_dir.name
    blocks: list = [["h", 2, "Attribution"]]
    per_image = pd.read_csv(out / PER_IMAGE) if (out / PER_IMAGE).is_file() else pd.DataFrame()
    mine = per_image[per_image["run"] == name] if "run" in per_image else per_image
    if not mine.empty:
        methods = ", ".join(dict.fromkeys(mine["method"]))
        blocks.append(["p", f"{mine['image_id'].nunique()} test images explained with {methods} "
                            f"(output: {mine['target'].iloc[0] if 'target' in mine else 'log10 BNPP'}); maps under "
                            f"{out / 'maps' / name}."])
    if (out / IN_LUNG).is_file():
        blocks += _in_lung_blocks(out, name, size)
    blocks += _scorecard_blocks(out)
    if sanity_dir is not None and (sanity_dir / SANITY_CSV).is_file():
        blocks += _sanity_blocks(sanity_dir)
    panels = {path.stem: str(path.resolve()) for path in sorted((out / "panels").glob("*.png"))}
    if command:
        blocks.append(["p", f"Command: `{command}`"])
    return {"blocks": blocks, "claim": CLAIM_COVERED, "heatmaps": panels}


def add_attribution_to_reports(run_dirs: list[str | os.PathLike], out: str | os.PathLike,
                               sanity_root: str | os.PathLike | None = None,
                               command: str | None = None) -> list[Path]:
    """Add (or replace) the attribution section of every evaluated run's report; returns the HTML reports written.

    Runs without metrics.json (not evaluated) are skipped: their report does not exist yet.
    """
    written = []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "metrics.json").is_file():
            continue
        sanity_dir = Path(sanity_root) / run_dir.name if sanity_root else None
        section = attribution_section(run_dir, Path(out), sanity_dir, command)
        written.append(add_section(run_dir, "attribution", section, command)[1])
    return written
