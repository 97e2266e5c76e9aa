"""The manifest: one row per radiograph, validated into labelled, split, pseudonymised image rows.

Schema: data_manifests/README.md. Row numbers in rejects are line numbers of the CSV (header = 1),
as a spreadsheet shows them. Problems with one row reject that row with its column and reason;
problems with the whole file (missing columns) raise ManifestError.

Paths: relative to the manifest's folder, and must stay inside it (absolute paths that point inside it are
fine), unless `ManifestConfig.allow_outside_root` is set for an archive that lives elsewhere. Conflicts: rows
naming the same image for different patients, or with different values, are all rejected (we cannot tell
which one is right); an exact repeat of a row is a duplicate and only the repeats are rejected.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

import pandas as pd

from bnp_cxr.data import labs as labs_mod
from bnp_cxr.data.labs import LabValueError, PositivityThresholds
from bnp_cxr.data.privacy import pseudonymize, resolve_salt, unit_interval_hash
from bnp_cxr.rejects import Reject
from bnp_cxr.workspace import FINDINGS, LATERAL_VIEWS, SPLIT_FRACTIONS, SPLITS

REQUIRED_COLUMNS = ("patient_id", "image_path", "study_datetime")
LAB_COLUMNS = ("bnp", "bnpp")
OPTIONAL_COLUMNS = ("lab_datetime", "view", "lung_mask_path", "component_mask_path", "split")
FIRST_DATA_ROW = 2


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (unreadable, missing columns, conflicting label sources)."""


@dataclass(frozen=True)
class SplitConfig:
    """Patient-level split fractions (train, val, test) and the key of the deterministic split hash."""

    fractions: tuple[float, float, float] = SPLIT_FRACTIONS
    key: str = "bnp-cxr-split-v1"

    def __post_init__(self) -> None:
        if len(self.fractions) != len(SPLITS) or not math.isclose(sum(self.fractions), 1.0) or min(self.fractions) < 0:
            raise ValueError(f"split fractions (train, val, test) must be >= 0 and sum to 1, got {self.fractions}")

    def split_of(self, patient_id: str) -> str:
        """The split of a patient: the same patient always lands in the same split."""
        bucket = unit_interval_hash(patient_id, self.key)
        edge = 0.0
        for name, fraction in zip(SPLITS, self.fractions):
            edge += fraction
            if bucket < edge:
                return name
        return SPLITS[-1]


@dataclass(frozen=True)
class ManifestConfig:
    """How manifest rows become labelled image rows."""

    thresholds: PositivityThresholds = field(default_factory=PositivityThresholds)
    split: SplitConfig = field(default_factory=SplitConfig)
    pairing_window_hours: float = 24.0
    allow_lateral: bool = False
    salt: str | None = None
    allow_outside_root: bool = False  # accept absolute paths and ../ paths outside the manifest's folder
    # keep rows with neither BNP nor BNPP (NaN labs): an archive's films for --pretrain-extra, not for training
    keep_unlabelled: bool = False


@dataclass(frozen=True)
class ImageRow:
    """A validated radiograph row; `patient_id` stays in memory, derived data uses `patient_key`."""

    row: int
    image_path: str
    abs_path: str
    patient_id: str
    patient_key: str
    image_id: str
    split: str
    bnp_pg_ml: float
    bnpp_pg_ml: float
    bnp_censored: int
    bnpp_censored: int
    positive: int
    view: str
    lung_mask_path: str | None
    component_mask_path: str | None
    bnp_hours_from_study: float = math.nan
    bnpp_hours_from_study: float = math.nan
    findings: tuple[tuple[str, int], ...] = ()  # (finding column, 1 / 0 / -1 = not given), manifest order

    def __post_init__(self) -> None:
        # Rows cross process and JSON boundaries (Beam stages them as JSON): pairs come back as lists.
        object.__setattr__(self, "findings", tuple((str(name), int(value)) for name, value in self.findings))

    @property
    def log10_bnp(self) -> float:
        return labs_mod.safe_log10(self.bnp_pg_ml)

    @property
    def log10_bnpp(self) -> float:
        return labs_mod.safe_log10(self.bnpp_pg_ml)


@dataclass
class Manifest:
    """Validated rows plus every rejected input row; n_rows counts the manifest's data rows."""

    path: Path
    rows: list[ImageRow]
    rejects: list[Reject]
    n_rows: int
    labs_summary: dict = field(default_factory=dict)
    finding_columns: tuple[str, ...] = ()  # the manifest's columns named in bnp_cxr.workspace.FINDINGS


class _RowRejected(Exception):
    def __init__(self, column: str, reason: str, detail: str):
        super().__init__(detail)
        self.column, self.reason, self.detail = column, reason, detail


def normalise_path(root: Path, text: str) -> tuple[str, str]:
    """(path, where): '/'-separated normalised path, relative to root when it lies inside root.

    `where` is "" inside root, "absolute" for an absolute path outside it, "escapes" for a relative one
    leaving it (`../..`). Lexical only: symlinks inside root are followed, as the README suggests them.
    """
    raw = text.strip().replace("\\", "/")
    absolute = PurePosixPath(raw).is_absolute() or (len(raw) > 1 and raw[1] == ":")
    normalised = os.path.normpath(raw).replace(os.sep, "/")
    if absolute and os.path.isabs(raw):
        relative = os.path.relpath(normalised, os.path.abspath(root)).replace(os.sep, "/")
        if relative != ".." and not relative.startswith("../"):
            return relative, ""
    if absolute:
        return normalised, "absolute"
    return normalised, ("escapes" if normalised == ".." or normalised.startswith("../") else "")


def resolve_relative_path(root: Path, text: str, column: str, allow_outside_root: bool = False) -> tuple[str, str]:
    """Normalise a manifest path ('/' or '\\' separated), check it stays inside `root` unless allowed, and exists."""
    if not text.strip():
        raise _RowRejected(column, "missing_path", f"{column} is empty")
    normalised, outside = normalise_path(root, text)
    how = ("symlink the archive into the folder or allow paths outside it (--allow-outside-root, "
           "ManifestConfig.allow_outside_root)")
    if outside == "absolute" and not allow_outside_root:
        raise _RowRejected(column, "absolute_path", f"{column} {text!r} is an absolute path outside the manifest "
                                                    f"folder; {how}")
    if outside == "escapes" and not allow_outside_root:
        raise _RowRejected(column, "path_outside_root", f"{column} {text!r} escapes the manifest folder; {how}")
    absolute = root / normalised  # an absolute `normalised` replaces root
    if not absolute.is_file():
        raise _RowRejected(column, "file_not_found", f"{column} {text!r}: no such file (paths are relative to the "
                                                     f"manifest's folder)")
    return normalised, str(absolute)


def _image_conflicts(records: list[dict], root: Path) -> dict[int, tuple[str, str, str]]:
    """Rows (by offset) that share an image with another row -> (column, reason, detail) to reject them with.

    Same image, different patient_id: every row is `conflicting_patient`. Same patient, other cells differ:
    every row is `conflicting_duplicate`, naming the columns. Identical rows: the repeats are `duplicate_row`.
    """
    offsets_of: dict[str, list[int]] = defaultdict(list)
    for offset, record in enumerate(records):
        if record["image_path"].strip():
            offsets_of[normalise_path(root, record["image_path"])[0]].append(offset)
    findings = [column for column in FINDINGS if records and column in records[0]]
    columns = (*REQUIRED_COLUMNS, *LAB_COLUMNS, *OPTIONAL_COLUMNS, *findings)
    compared = [column for column in columns if column != "image_path"]
    conflicts: dict[int, tuple[str, str, str]] = {}
    for image_path, offsets in offsets_of.items():
        if len(offsets) < 2:
            continue
        rows = [FIRST_DATA_ROW + offset for offset in offsets]
        differing = [column for column in compared if len({records[o][column].strip() for o in offsets}) > 1]
        if "patient_id" in differing:  # the raw IDs stay out of the detail: rejects.csv is shared
            verdict = ("patient_id", "conflicting_patient", f"rows {rows} name image_path {image_path!r} for "
                                                            "different patients")
            conflicts.update({offset: verdict for offset in offsets})
        elif differing:
            verdict = (",".join(differing), "conflicting_duplicate", f"rows {rows} name image_path {image_path!r} "
                                                                     f"with different {', '.join(differing)}")
            conflicts.update({offset: verdict for offset in offsets})
        else:
            conflicts.update({offset: ("image_path", "duplicate_row", f"image_path {image_path!r} already on "
                                                                      f"row {rows[0]}") for offset in offsets[1:]})
    return conflicts


def _parse_lab_cell(record: dict, column: str) -> tuple[float, int]:
    try:
        return labs_mod.parse_lab_value(record.get(column, ""))
    except LabValueError as error:
        raise _RowRejected(column, "bad_lab_value", str(error)) from None


def _parse_study_datetime(record: dict, required: bool) -> datetime | None:
    text = record.get("study_datetime", "").strip()
    if not text and not required:
        return None
    try:
        return labs_mod.parse_datetime(text)
    except LabValueError as error:
        raise _RowRejected("study_datetime", "bad_datetime", str(error)) from None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read as CSV: {error}") from error
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    return frame


def load_manifest(path: str | os.PathLike, labs_path: str | os.PathLike | None = None,
                  config: ManifestConfig | None = None) -> Manifest:
    """Validate a manifest (and optional labs table) into image rows and rejects."""
    config = config or ManifestConfig()
    path = Path(path)
    frame = _checked_frame(path, labs_path is not None, config.keep_unlabelled)
    findings = tuple(column for column in frame.columns if column in FINDINGS)
    root = path.parent
    rejects: list[Reject] = []
    accepted: list[dict] = []

    def reject(row: int, image_path: str, column: str, reason: str, detail: str, stage: str = "manifest") -> None:
        rejects.append(Reject(source=path.name, row=row, image_path=image_path, stage=stage, reason=reason,
                              column=column, detail=detail))

    records = frame.to_dict("records")
    conflicts = _image_conflicts(records, root)
    for offset, record in enumerate(records):
        row = FIRST_DATA_ROW + offset
        try:
            if offset in conflicts:
                raise _RowRejected(*conflicts[offset])
            accepted.append(_validate_row(record, row, root, config, labs_path is not None, findings))
        except _RowRejected as error:
            reject(row, record["image_path"], error.column, error.reason, error.detail)

    labs_summary: dict = {}
    if labs_path is not None:
        accepted, labs_summary = _attach_labs(accepted, Path(labs_path), config, rejects, reject)
    accepted = _resolve_patient_splits(accepted, reject)
    rows = _image_rows(accepted, config, labs_path is not None, reject)
    rejects.sort(key=lambda r: (r.stage != "labs", r.row))
    return Manifest(path=path, rows=rows, rejects=rejects, n_rows=len(frame), labs_summary=labs_summary,
                    finding_columns=findings)


def _checked_frame(path: Path, labs_table: bool, unlabelled: bool = False) -> pd.DataFrame:
    """The manifest as strings with every known column present; ManifestError for a missing required one (the lab
    columns are optional with a labs table, or for an unlabelled archive)."""
    frame = _read_csv(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if not (labs_table or unlabelled):
        missing += [column for column in LAB_COLUMNS if column not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing required column(s) {missing}; found {list(frame.columns)}")
    for column in (*REQUIRED_COLUMNS, *LAB_COLUMNS, *OPTIONAL_COLUMNS):
        if column not in frame.columns:
            frame[column] = ""
    has_inline_labs = any((frame[column].str.strip() != "").any() for column in LAB_COLUMNS)
    if labs_table and has_inline_labs:
        raise ManifestError(f"{path}: has bnp/bnpp values and a labs table was given; use one source of labs")
    return frame


def _image_rows(accepted: list[dict], config: ManifestConfig, paired: bool, reject) -> list[ImageRow]:
    """ImageRows with pseudonymous keys, split and positivity; rows with neither lab are rejected (no_label) unless
    config.keep_unlabelled."""
    salt = resolve_salt(config.salt)
    rows = []
    for item in accepted:
        bnp, bnpp = item.pop("bnp"), item.pop("bnpp")
        if math.isnan(bnp[0]) and math.isnan(bnpp[0]) and not config.keep_unlabelled:
            window = f" within {config.pairing_window_hours:g} h of the study" if paired else ""
            reject(item["row"], item["image_path"], "bnp,bnpp", "no_label", f"no BNP or BNPP value{window}")
            continue
        patient_id = item["patient_id"]
        rows.append(ImageRow(
            patient_key=pseudonymize(patient_id, salt, kind="patient"),
            image_id=pseudonymize(f"{patient_id}\x00{item['image_path']}", salt, kind="image"),
            split=item.pop("split") or config.split.split_of(patient_id),
            bnp_pg_ml=bnp[0], bnp_censored=bnp[1], bnpp_pg_ml=bnpp[0], bnpp_censored=bnpp[1],
            positive=labs_mod.combined_positivity(bnp, bnpp, config.thresholds),
            **{key: value for key, value in item.items() if key != "study_datetime"},
        ))
    return rows


def _parse_findings(record: dict, columns: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """(column, 1 / 0 / -1) per finding column: 1 / 0 as given (also 1.0 / 0.0), -1 for an empty cell."""
    values = []
    for column in columns:
        cell = record[column].strip()
        value = {"": -1, "0": 0, "1": 1, "0.0": 0, "1.0": 1}.get(cell)
        if value is None:
            raise _RowRejected(column, "bad_finding", f"{column} {record[column]!r} is not 1, 0 or empty")
        values.append((column, value))
    return tuple(values)


def _validate_row(record: dict, row: int, root: Path, config: ManifestConfig, pairing: bool,
                  finding_columns: tuple[str, ...] = ()) -> dict:
    patient_id = record["patient_id"].strip()
    if not patient_id:
        raise _RowRejected("patient_id", "missing_patient_id", "patient_id is empty")
    image_path, abs_path = resolve_relative_path(root, record["image_path"], "image_path", config.allow_outside_root)
    view = record["view"].strip().upper()
    if view in LATERAL_VIEWS and not config.allow_lateral:
        raise _RowRejected("view", "lateral_view", f"view {record['view']!r} is lateral; frontal views only")
    split = record["split"].strip().lower()
    if split and split not in SPLITS:
        raise _RowRejected("split", "bad_split", f"split {record['split']!r} is not one of {SPLITS}")
    study_datetime = _parse_study_datetime(record, required=pairing)
    bnp, bnpp = _parse_lab_cell(record, "bnp"), _parse_lab_cell(record, "bnpp")
    if record["lab_datetime"].strip():
        try:
            labs_mod.parse_datetime(record["lab_datetime"])
        except LabValueError as error:
            raise _RowRejected("lab_datetime", "bad_datetime", str(error)) from None
    masks = {}
    for column in ("lung_mask_path", "component_mask_path"):
        masks[column] = (resolve_relative_path(root, record[column], column, config.allow_outside_root)[1]
                         if record[column].strip() else None)
    return dict(row=row, image_path=image_path, abs_path=abs_path, patient_id=patient_id, split=split, view=view,
                study_datetime=study_datetime, bnp=bnp, bnpp=bnpp, findings=_parse_findings(record, finding_columns),
                **masks)


def _attach_labs(accepted: list[dict], labs_path: Path, config: ManifestConfig, rejects: list[Reject],
                 reject) -> tuple[list[dict], dict]:
    try:
        table = labs_mod.load_labs(str(labs_path), first_data_row=FIRST_DATA_ROW)
    except LabValueError as error:
        raise ManifestError(str(error)) from error
    for reason, problems in (("bad_lab_row", table.invalid), ("conflicting_lab", table.conflicts)):
        rejects.extend(Reject(source=labs_path.name, row=row, stage="labs", reason=reason, column=column, detail=detail)
                       for row, column, detail in problems)
    studies = pd.DataFrame(
        {"patient_id": [item["patient_id"] for item in accepted],
         "study_datetime": pd.to_datetime([item["study_datetime"] for item in accepted])}
    )
    paired = labs_mod.pair_nearest_labs(studies, table, config.pairing_window_hours)
    used_rows: set[int] = set()
    for index, item in enumerate(accepted):
        for test, key in (("BNP", "bnp"), ("BNPP", "bnpp")):
            match = paired[test].iloc[index]
            if not math.isnan(match["value"]):
                item[key] = (float(match["value"]), int(match["censored"]))
                item[f"{key}_hours_from_study"] = float(match["hours_from_study"])
                used_rows.add(int(match["labs_row"]))
    unusable = len(table.invalid) + len(table.conflicts)
    summary = {"rows": table.n_rows, "invalid": unusable, "paired": len(used_rows),
               "unused": table.n_rows - unusable - len(used_rows),
               "window_hours": config.pairing_window_hours}
    return accepted, summary


def _resolve_patient_splits(accepted: list[dict], reject) -> list[dict]:
    """Give every row of a patient the split its split-column rows name; reject patients named in two."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item in accepted:
        if item["split"]:
            splits_of[item["patient_id"]].add(item["split"])
    kept = []
    for item in accepted:
        named = splits_of.get(item["patient_id"], set())
        if len(named) > 1:
            detail = f"this patient's rows name different splits {sorted(named)}"
            reject(item["row"], item["image_path"], "split", "conflicting_split", detail)
            continue
        # Rows with an empty split cell follow the patient's named split, so no patient straddles splits.
        item["split"] = next(iter(named), "")
        kept.append(item)
    return kept
