"""MIMIC-CXR(-JPG) radiographs joined with MIMIC-IV NT-proBNP / BNP labs as a standard bnp-cxr manifest + labs table.

Unlike the other sources these are real labs, not stand-ins: every frontal image (PA / AP) of a study is a
manifest row when its patient has a result of a chosen item within +-window hours of the study, and
make_tfrecords pairs it with the same code (bnp_cxr.data.labs.pair_nearest_labs: the nearest result, before or
after; equidistant results go to the earlier one, results at the same time to the earlier labs.csv row).
Lateral and other views, unparseable study times, files missing on disk, patients in two official splits and
images without a lab in the window are rejects (stage "source"), counted in flow.json / flow.png.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd

from bnp_cxr.data import labs as labs_mod
from bnp_cxr.data.manifest import SplitConfig
from bnp_cxr.data.sources.common import Dataset, SourceManifest, link_dataset, source_reject, write_source
from bnp_cxr.data.sources.mimic import schema
from bnp_cxr.data.sources.mimic.cxr import (image_format, load_images, parse_study_datetime, read_findings,
                                            read_official_split)
from bnp_cxr.data.sources.mimic.flow import write_flow
from bnp_cxr.data.sources.mimic.labevents import choose_items, describe_items, stream_labevents
from bnp_cxr.workspace import LATERAL_VIEWS, SPLITS

LINK_NAME = "mimic-cxr"
LABS_NAME = "labs.csv"
MANIFEST_COLUMNS = ("patient_id", "image_path", "study_datetime", "view", "split")
FRONTAL_VIEWS = frozenset({"PA", "AP"})


@dataclass(frozen=True)
class MimicManifest(SourceManifest):
    """A source manifest plus its labs table and the flow report (counts, flow.json, flow.png)."""

    labs: Path = Path()
    flow: Mapping = field(default_factory=dict)
    flow_json: Path = Path()
    flow_png: Path = Path()


def _exclusion(record: dict, root: Path, seen: set[str]) -> tuple[str, str, str, str] | None:
    """(flow category, reason, column, detail) when a listed image cannot be a manifest row, else None."""
    if record["dicom_id"] in seen:
        return "duplicate_image", "duplicate_image", "dicom_id", "dicom_id listed more than once"
    if record["header_error"] == "missing":
        return "missing_image", "missing_image", "path", f"{record['path']} not found"
    if record["header_error"]:
        return "unreadable_header", "unreadable_header", "path", record["header_error"]
    view = record["view"].upper()
    if view not in FRONTAL_VIEWS:
        lateral = view in LATERAL_VIEWS or "LAT" in view
        return (("lateral" if lateral else "other_view"), "non_frontal_view", "ViewPosition",
                f"ViewPosition {record['view']!r} is {'lateral' if lateral else 'not PA or AP'}")
    try:
        record["study_datetime"] = parse_study_datetime(record["date"], record["time"])
    except ValueError as error:
        return "bad_study_datetime", "bad_study_datetime", "StudyDate,StudyTime", str(error)
    if not (root / record["path"]).is_file():
        return "missing_image", "missing_image", "path", f"{record['path']} not found"
    return None


def select_frontal(images: pd.DataFrame, root: Path, source: str) -> tuple[list[dict], list, Counter]:
    """(frontal images on disk with their study time, rejects, excluded counts per flow category)."""
    kept, rejects, excluded, seen = [], [], Counter(), set()
    for record in images.to_dict("records"):
        problem = _exclusion(record, root, seen)
        seen.add(record["dicom_id"])
        if problem:
            excluded[problem[0]] += 1
            rejects.append(source_reject(source, record["row"], record["path"], *problem[1:]))
        else:
            kept.append(record)
    return kept, rejects, excluded


def assign_splits(images: list[dict], official: Mapping[str, str] | None, source: str) -> tuple[list[dict], list]:
    """Give each image its patient's split (official, else the hashed patient split); reject patients in two."""
    named: dict[str, set[str]] = {}
    if official is not None:
        for record in images:
            if record["dicom_id"] in official:
                named.setdefault(record["subject_id"], set()).add(official[record["dicom_id"]])
    kept, rejects, hashed = [], [], SplitConfig()
    for record in images:
        splits = named.get(record["subject_id"], set())
        if len(splits) > 1:
            rejects.append(source_reject(source, record["row"], record["path"], "conflicting_split", "split",
                                         f"the official split puts this patient in {sorted(splits)}"))
            continue
        record["split"] = next(iter(splits)) if splits else hashed.split_of(record["subject_id"])
        kept.append(record)
    return kept, rejects


def pair_images(images: list[dict], labs_path: Path, window_hours: float) -> tuple[dict, int]:
    """({test: pairing frame indexed like images}, conflicting lab rows) by the records' own pairing code."""
    table = labs_mod.load_labs(str(labs_path))
    studies = pd.DataFrame({"patient_id": [record["subject_id"] for record in images],
                            "study_datetime": pd.to_datetime([record["study_datetime"] for record in images])})
    return labs_mod.pair_nearest_labs(studies, table, window_hours), len(table.conflicts)


def write_mimic_manifest(cxr_dir: str | os.PathLike, out_dir: str | os.PathLike, *, iv_dir: str | os.PathLike,
                         official_split: bool = False, itemids: Mapping[str, Iterable[int]] | None = None,
                         images: str = "auto", window_hours: float = 24.0, progress: bool = False,
                         log: Callable[[str], None] = print) -> MimicManifest:
    """Write out_dir/manifest.csv, labs.csv, rejects.csv, flow.json and flow.png from MIMIC-CXR and MIMIC-IV.

    cxr_dir: MIMIC-CXR-JPG (or the DICOM release; images='jpg' / 'dicom' overrides the guess) with its CSVs,
    linked as out_dir/mimic-cxr. iv_dir: MIMIC-IV (hosp/labevents.csv.gz, hosp/d_labitems.csv.gz). itemids:
    {'BNPP': [...], 'BNP': [...]} instead of the d_labitems label search. Deterministic.
    """
    iv = Path(iv_dir)
    if not iv.is_dir():
        raise FileNotFoundError(f"MIMIC-IV folder {iv_dir} not found")
    link, out = link_dataset(cxr_dir, out_dir, LINK_NAME), Path(out_dir)
    chosen = choose_items(iv, itemids)
    for line in describe_items(iv, chosen):
        log(f"chosen lab item: {line}")
    listed, source = load_images(link, image_format(link, images), progress=progress)
    findings, finding_columns = read_findings(link)
    frontal, rejects, excluded = select_frontal(listed, link, source)
    frontal, split_rejects = assign_splits(frontal, read_official_split(link) if official_split else None, source)
    excluded["conflicting_split"] = len(split_rejects)
    scan = stream_labevents(iv / schema.LABEVENTS, chosen, {int(record["subject_id"]) for record in frontal},
                            out / LABS_NAME, progress=progress)
    labs_path = scan.labs_csv
    paired, conflicts = pair_images(frontal, labs_path, window_hours) if frontal else ({}, 0)
    rows, no_lab = [], []
    for index, record in enumerate(frontal):
        labs = {test: paired[test].iloc[index] for test in paired}
        if not any(not math.isnan(match["value"]) for match in labs.values()):
            no_lab.append(source_reject(source, record["row"], record["path"], "no_lab_in_window", "StudyTime",
                                        f"no {' or '.join(sorted(set(chosen.values())))} within {window_hours:g} h"))
            continue
        record["labs"] = {test: (float(match["value"]), int(match["censored"])) for test, match in labs.items()}
        rows.append(record)
    excluded["no_lab_in_window"] = len(no_lab)
    manifest_rows = [_manifest_row(record, findings, finding_columns, official_split) for record in rows]
    dataset = Dataset("MIMIC-CXR + MIMIC-IV", "measured",
                      f"MIMIC-CXR radiographs with measured MIMIC-IV NT-proBNP / BNP (tools/make_manifest.py mimic), "
                      f"each image paired with the nearest lab within +-{window_hours:g} h; findings from the "
                      "CheXpert-style report labels")
    written = write_source(out, manifest_rows, [*rejects, *split_rejects, *no_lab, *scan.rejects],
                           MANIFEST_COLUMNS, finding_columns, dataset)
    flow = flow_counts(listed, frontal, rows, excluded, scan, conflicts, window_hours, official_split, chosen)
    flow_json, flow_png = write_flow(flow, out)
    return MimicManifest(**vars(written), labs=labs_path, flow=flow, flow_json=flow_json, flow_png=flow_png)


def _manifest_row(record: dict, findings: Mapping, columns: tuple[str, ...], official_split: bool) -> dict:
    cells = findings.get((record["subject_id"], record["study_id"]), {})
    return {"patient_id": record["subject_id"], "image_path": f"{LINK_NAME}/{record['path']}",
            "study_datetime": record["study_datetime"].isoformat(), "view": record["view"].upper(),
            # Without --official-split the cell stays empty and make_tfrecords computes the same hashed split.
            "split": record["split"] if official_split else "", **{column: cells.get(column, "") for column in columns}}


def _positivity(record: dict) -> int:
    missing = (math.nan, 0)
    return labs_mod.combined_positivity(record["labs"].get("BNP", missing), record["labs"].get("BNPP", missing),
                                        labs_mod.PositivityThresholds())


def _groups(records: Iterable[dict]) -> dict[str, int]:
    records = list(records)
    return {"images": len(records), "studies": len({(r["subject_id"], r["study_id"]) for r in records}),
            "patients": len({r["subject_id"] for r in records})}


def flow_counts(listed: pd.DataFrame, frontal: list[dict], rows: list[dict], excluded: Counter, scan, conflicts: int,
                window_hours: float, official_split: bool, chosen: Mapping[int, str]) -> dict:
    """The flow report: counts at every step, from the listed images to the manifest rows per split."""
    tests = sorted(set(chosen.values()))
    states = {labs_mod.POSITIVE: "positive", labs_mod.NEGATIVE: "negative", labs_mod.UNKNOWN: "unknown"}
    splits = {}
    for split in SPLITS:
        members = [record for record in rows if record["split"] == split]
        counted = Counter(states[_positivity(record)] for record in members)
        splits[split] = {**_groups(members), **{name: counted[name] for name in states.values()}}
    paired = {test: sum(not math.isnan(record["labs"][test][0]) for record in rows) for test in tests}
    return {
        "window_hours": window_hours, "split": "official" if official_split else "patient hash",
        "lab_items": {test: sorted(itemid for itemid, kind in chosen.items() if kind == test) for test in tests},
        "listed": _groups(listed.to_dict("records")),
        "excluded": {key: excluded.get(key, 0) for key in ("lateral", "other_view", "bad_study_datetime",
                                                           "duplicate_image", "unreadable_header", "missing_image",
                                                           "conflicting_split")},
        "frontal": _groups(frontal),
        "labevents": {"rows_read": scan.rows_read, "chosen_items": scan.chosen_items,
                      "with_radiographs": scan.with_radiographs, "usable": dict(scan.usable),
                      "unusable": dict(sorted(scan.unusable.items())), "conflicting": conflicts},
        "no_lab_in_window": excluded.get("no_lab_in_window", 0),
        "with_lab": {**_groups(rows), "per_test": paired},
        "positivity": {name: sum(split[name] for split in splits.values()) for name in states.values()},
        "splits": splits,
    }


__all__ = ["MimicManifest", "write_mimic_manifest"]
