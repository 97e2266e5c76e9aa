"""The attribution and sanity sections of a run report, built from what tools/attribute.py and
tools/sanity_check.py wrote, again at every rewrite of the report.

Reads files only (in_lung.csv, in_lung_per_image.csv, in_lung_trend.png, panels/, scorecard files, the sanity
check's sanity.csv / sanity.png), so evaluation does not depend on the attribution stage's code.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from bnp_cxr.evaluation.report import add_sections, add_to_reports, outputs_gone

IN_LUNG, PER_IMAGE, TREND = "in_lung.csv", "in_lung_per_image.csv", "in_lung_trend.png"
SANITY_CSV, SANITY_PLOT = "sanity.csv", "sanity.png"
# bnp_cxr.attribution.scorecard_run's file names (a test keeps the two in step)
SCORECARD_CSV, SCORECARD_AGREEMENT, SCORECARD_PLOT = "scorecard.csv", "scorecard_rank_agreement.csv", "scorecard.png"
IN_LUNG_COLUMNS = ("mass_in_lung_fraction", "top_in_lung_fraction", "lung_area_fraction")
CLAIM_COVERED = ["Methods for explainability and how they were validated"]


def _value(row: pd.Series, name: str, digits: int = 3) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    low, high = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


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
    blocks = [["h", 2, "Model-randomisation sanity check"],
              ["p", "Similarity of each method's maps before and after randomising the model's layers from the top "
                    "(Adebayo et al., 2018): maps that stay similar do not depend on what the model learned."],
              ["table", columns, rows]]
    if (sanity_dir / SANITY_PLOT).is_file():
        blocks.append(["figure", str((sanity_dir / SANITY_PLOT).resolve()), "Sanity check: similarity vs layers "
                                                                           "randomised"])
    return blocks


def _scorecard_blocks(out: Path, size: int) -> list:
    """The scorecard at this run's size: metrics (rows) x methods (columns) with their CIs, the methods that
    could not run and why, the agreement of each metric's ranking with the phantom's truth, and the figure."""
    table = pd.read_csv(out / SCORECARD_CSV)
    table = table[table["size"] == size] if "size" in table else table
    blocks: list = [["h", 2, "Attribution scorecard"]]
    scored = table[table["reason"].isna()] if "reason" in table else table
    metrics = [column for column in scored if f"{column}_lo" in scored and f"{column}_hi" in scored
               and not column.startswith("component_") and scored[column].notna().any()]
    if scored.empty:
        blocks.append(["p", f"No method was scored at {size} px in {out / SCORECARD_CSV}."])
    else:
        methods = list(scored["method"])
        rows = [[name, *(_value(row, name, digits=2) for _, row in scored.iterrows())] for name in metrics]
        blocks += [["p", f"{size} px, mean over the sample with patient-bootstrap 95 % CIs (docs/scorecard.md "
                         f"defines each metric and which way is better); per-image values in {out}."],
                   ["table", ["metric", *methods], rows]]
    if "reason" in table and table["reason"].notna().any():
        skipped = table[table["reason"].notna()]
        blocks.append(["list", [f"{row['method']}: not applicable ({row['reason']})" for _, row in skipped.iterrows()]])
    if (out / SCORECARD_AGREEMENT).is_file():
        agreement = pd.read_csv(out / SCORECARD_AGREEMENT)
        agreement = agreement[agreement["size"] == size] if "size" in agreement else agreement
        if not agreement.empty:
            blocks += [["p", "Spearman correlation of each metric's ranking of the methods with the truth ranking "
                             "(the phantom's known signal components):"],
                       ["table", ["metric", "spearman", "methods"],
                        [[row["metric"], _value(row, "spearman"), int(row["n_methods"])]
                         for _, row in agreement.iterrows()]]]
    if (out / SCORECARD_PLOT).is_file():
        blocks.append(["figure", str((out / SCORECARD_PLOT).resolve()), "Attribution scorecard"])
    return blocks


def _run_size(run_dir: Path) -> int:
    return int(json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["size"])


def attribution_section(run_dir: Path, out: Path) -> dict:
    """The section (blocks, CLAIM items, heatmap panel per image ID) for one explained run, from out's files."""
    size, name = _run_size(run_dir), run_dir.name
    blocks: list = [["h", 2, "Attribution"]]
    per_image = pd.read_csv(out / PER_IMAGE) if (out / PER_IMAGE).is_file() else pd.DataFrame()
    mine = per_image[per_image["run"] == name] if "run" in per_image else per_image
    if mine.empty:
        blocks.append(outputs_gone(f"attribution outputs for {name}", out, "tools/attribute.py"))
    else:
        methods = ", ".join(dict.fromkeys(mine["method"]))
        blocks.append(["p", f"{mine['image_id'].nunique()} test images explained with {methods} "
                            f"(output: {mine['target'].iloc[0] if 'target' in mine else 'log10 BNPP'}); maps under "
                            f"{out / 'maps' / name}."])
    if (out / IN_LUNG).is_file():
        blocks += _in_lung_blocks(out, name, size)
    panels = {path.stem: str(path.resolve()) for path in sorted((out / "panels").glob("*.png"))}
    return {"blocks": blocks, "claim": CLAIM_COVERED, "heatmaps": panels}


def sanity_section(sanity_dir: Path) -> dict:
    """The model-randomisation section from a sanity check's folder (sanity.csv, sanity.png)."""
    if not (sanity_dir / SANITY_CSV).is_file():
        blocks = [["h", 2, "Model-randomisation sanity check"],
                  outputs_gone(SANITY_CSV, sanity_dir, "tools/sanity_check.py")]
    else:
        blocks = _sanity_blocks(sanity_dir)
    return {"blocks": blocks, "claim": CLAIM_COVERED}


def scorecard_section(run_dir: Path, out: Path) -> dict:
    """The scorecard section of one run, from out's scorecard.csv (and its agreement table and figure)."""
    if (out / SCORECARD_CSV).is_file():
        blocks = _scorecard_blocks(out, _run_size(run_dir))
    else:
        blocks = [["h", 2, "Attribution scorecard"],
                  outputs_gone(SCORECARD_CSV, out, "tools/attribute.py --scorecard")]
    return {"blocks": blocks, "claim": CLAIM_COVERED}


def build_section(run_dir: Path, source: dict) -> dict:
    """A report section rebuilt from the files its source names (bnp_cxr.evaluation.report.SECTION_BUILDERS)."""
    if source["kind"] == "attribution":
        return attribution_section(run_dir, Path(source["out"]))
    if source["kind"] == "scorecard":
        return scorecard_section(run_dir, Path(source["out"]))
    return sanity_section(Path(source["dir"]))


def _source(kind: str, folder: str | os.PathLike, command: str | None = None) -> dict:
    """A section rebuilt from `folder` (the sanity check's own folder, else the attribution output folder)."""
    key = "dir" if kind == "sanity" else "out"
    return {"kind": kind, key: str(Path(folder).resolve()), "command": command}


def add_scorecard_to_reports(run_dirs: list[str | os.PathLike], out: str | os.PathLike,
                             command: str | None = None) -> list[Path]:
    """Add (or replace) the scorecard section of every evaluated run's report; the HTML reports written."""
    return add_to_reports(run_dirs, "scorecard", _source("scorecard", out), command)


def add_sanity_to_report(run_dir: str | os.PathLike, sanity_dir: str | os.PathLike,
                         command: str | None = None) -> Path | None:
    """Add (or replace) the sanity section of an evaluated run's report; None when it has no report yet."""
    written = add_to_reports([run_dir], "sanity", _source("sanity", sanity_dir), command)
    return written[0] if written else None


def add_attribution_to_reports(run_dirs: list[str | os.PathLike], out: str | os.PathLike,
                               sanity_root: str | os.PathLike | None = None,
                               command: str | None = None) -> list[Path]:
    """Add (or replace) the attribution section of every evaluated run's report; returns the HTML reports written.

    The section is rebuilt from `out` whenever the report is rewritten. A scorecard already in `out` and a
    sanity check already in sanity_root/<run name> get their sections too, in the same rewrite. Runs without
    metrics.json (not evaluated) are skipped: their report does not exist yet.
    """
    written = []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "metrics.json").is_file():
            continue
        sources = [_source("attribution", out, command)]
        if (Path(out) / SCORECARD_CSV).is_file():
            sources.append(_source("scorecard", out))
        sanity_dir = Path(sanity_root) / run_dir.name if sanity_root else None
        if sanity_dir is not None and (sanity_dir / SANITY_CSV).is_file():
            sources.append(_source("sanity", sanity_dir))
        sections = {source["kind"]: {"source": source} for source in sources}
        written.append(add_sections(run_dir, sections, {"attribution": command} if command else {})[1])
    return written
