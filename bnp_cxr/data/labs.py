"""Serum BNP / NT-proBNP (BNPP) values: parsing censored lab strings, positivity, pairing labs to images.

Positive for cardiogenic pulmonary oedema follows Huynh et al. (MIDL 2022): BNPP > 400 pg/mL or
BNP > 100 pg/mL. Laboratory systems report values outside the assay range as censored strings
(``<50``, ``>35000``); these parse to the bound and carry a censoring flag.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from bnp_cxr.workspace import BNP_THRESHOLD_PG_ML, BNPP_THRESHOLD_PG_ML

LAB_TESTS = ("BNP", "BNPP")
LEFT_CENSORED, UNCENSORED, RIGHT_CENSORED = -1, 0, 1
POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1

_LAB_PATTERN = re.compile(r"^(?P<op><=|>=|<|>)?\s*(?P<num>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)$")
_DICOM_DATETIME_FORMATS = ("%Y%m%d%H%M%S.%f", "%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d")


class LabValueError(ValueError):
    """A lab value or date that cannot be used; the message says why."""


@dataclass(frozen=True)
class PositivityThresholds:
    """Thresholds in pg/mL above which a test counts as positive (strictly greater)."""

    bnpp_pg_ml: float = BNPP_THRESHOLD_PG_ML
    bnp_pg_ml: float = BNP_THRESHOLD_PG_ML


def parse_lab_value(text: str) -> tuple[float, int]:
    """Parse a lab string in pg/mL to (value, censoring flag); empty -> (nan, 0).

    ``<50`` -> (50.0, -1), ``>35000`` -> (35000.0, +1), ``1,234.5`` -> (1234.5, 0). Non-numeric,
    zero, negative and non-finite values raise LabValueError (log10 is undefined for them).
    """
    stripped = str(text).strip().replace(",", "")
    if not stripped:
        return math.nan, UNCENSORED
    match = _LAB_PATTERN.match(stripped)
    if match is None:
        raise LabValueError(f"not a number: {text!r}")
    value = float(match["num"])
    if not math.isfinite(value):
        raise LabValueError(f"not finite: {text!r}")
    if value <= 0:
        raise LabValueError(f"must be > 0 pg/mL, got {text!r}")
    op = match["op"] or ""
    flag = LEFT_CENSORED if op.startswith("<") else RIGHT_CENSORED if op.startswith(">") else UNCENSORED
    return value, flag


def parse_datetime(text: str) -> datetime:
    """Parse ISO 8601 or DICOM DT (YYYYMMDD[HHMMSS]) into a naive datetime (aware ones are converted to UTC)."""
    stripped = str(text).strip()
    if not stripped:
        raise LabValueError("empty date")
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        parsed = None
        for fmt in _DICOM_DATETIME_FORMATS:
            try:
                parsed = datetime.strptime(stripped, fmt)
                break
            except ValueError:
                continue
        if parsed is None:
            raise LabValueError(f"cannot parse date {text!r} (use ISO 8601, e.g. 2019-03-04T10:22:00)") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def test_positivity(value: float, censored: int, threshold: float) -> int:
    """1 above threshold, 0 at or below, -1 unknown (missing, or censored on the wrong side of the threshold)."""
    if math.isnan(value):
        return UNKNOWN
    if censored == LEFT_CENSORED:  # true value <= bound
        return NEGATIVE if value <= threshold else UNKNOWN
    if censored == RIGHT_CENSORED:  # true value >= bound
        return POSITIVE if value > threshold else UNKNOWN
    return POSITIVE if value > threshold else NEGATIVE


def combined_positivity(
    bnp: tuple[float, int], bnpp: tuple[float, int], thresholds: PositivityThresholds
) -> int:
    """Positive if either known test is positive; negative if every known test is negative; else -1."""
    states = (test_positivity(*bnpp, thresholds.bnpp_pg_ml), test_positivity(*bnp, thresholds.bnp_pg_ml))
    # A missing test does not block a call from the other; a censored, ambiguous one does.
    known = [state for state, (value, _) in zip(states, (bnpp, bnp)) if not math.isnan(value)]
    if POSITIVE in known:
        return POSITIVE
    if known and all(state == NEGATIVE for state in known):
        return NEGATIVE
    return UNKNOWN


def safe_log10(value: float) -> float:
    """log10 of a positive value, NaN for NaN."""
    return math.log10(value) if value > 0 else math.nan


@dataclass(frozen=True)
class LabTable:
    """Validated labs: one DataFrame per test with patient_id, lab_datetime, value, censored, labs_row."""

    by_test: dict[str, pd.DataFrame]
    n_rows: int
    invalid: list[tuple[int, str, str]]  # (row, column, detail)
    conflicts: list[tuple[int, str, str]] = field(default_factory=list)  # (row, column, detail), all rows involved


def load_labs(path: str, *, first_data_row: int = 2) -> LabTable:
    """Read a labs table (patient_id, lab_datetime, test in {BNP, BNPP}, value); invalid rows are listed.

    Rows giving one patient different results for the same test at the same time are all set aside as
    conflicts (which one is right is unknowable); exact repeats are harmless and kept.
    """
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"patient_id", "lab_datetime", "test", "value"} - set(frame.columns)
    if missing:
        raise LabValueError(f"{path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    valid: dict[str, list[dict]] = {test: [] for test in LAB_TESTS}
    invalid: list[tuple[int, str, str]] = []
    for offset, record in enumerate(frame.to_dict("records")):
        row = first_data_row + offset
        patient_id = record["patient_id"].strip()
        test = record["test"].strip().upper().replace("-", "").replace("NTPROBNP", "BNPP")
        if not patient_id:
            invalid.append((row, "patient_id", "empty patient_id"))
            continue
        if test not in valid:
            invalid.append((row, "test", f"test {record['test']!r} is not one of {LAB_TESTS}"))
            continue
        try:
            when = parse_datetime(record["lab_datetime"])
        except LabValueError as error:
            invalid.append((row, "lab_datetime", str(error)))
            continue
        try:
            value, censored = parse_lab_value(record["value"])
        except LabValueError as error:
            invalid.append((row, "value", str(error)))
            continue
        if math.isnan(value):
            invalid.append((row, "value", "empty value"))
            continue
        valid[test].append(
            {"patient_id": patient_id, "lab_datetime": when, "value": value, "censored": censored, "labs_row": row}
        )
    conflicts = _drop_conflicting(valid)
    columns = {"patient_id": object, "lab_datetime": "datetime64[ns]", "value": float, "censored": int,
               "labs_row": int}
    by_test = {test: pd.DataFrame(rows, columns=list(columns)).astype(columns) for test, rows in valid.items()}
    return LabTable(by_test=by_test, n_rows=len(frame), invalid=invalid, conflicts=conflicts)


def _drop_conflicting(valid: dict[str, list[dict]]) -> list[tuple[int, str, str]]:
    """Remove (in place) every lab row whose patient, test and time recur with another result; list them."""
    conflicts = []
    for test, rows in valid.items():
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for row in rows:
            groups[(row["patient_id"], row["lab_datetime"])].append(row)
        clashing = [group for group in groups.values() if len({(r["value"], r["censored"]) for r in group}) > 1]
        for group in clashing:
            numbers = [r["labs_row"] for r in group]
            conflicts += [(number, "value", f"rows {numbers} give this patient different {test} results at "
                                            f"{group[0]['lab_datetime']:%Y-%m-%d %H:%M}") for number in numbers]
        dropped = {r["labs_row"] for group in clashing for r in group}
        rows[:] = [row for row in rows if row["labs_row"] not in dropped]
    return sorted(conflicts)


def pair_nearest_labs(
    studies: pd.DataFrame, labs: LabTable, window_hours: float = 24.0
) -> dict[str, pd.DataFrame]:
    """For each study (index, patient_id, study_datetime) the nearest lab of each test within +-window_hours.

    Returns per test a frame indexed like `studies` with value, censored, labs_row and hours_from_study
    (lab minus study; NaN where no lab is in the window).
    """
    tolerance = pd.Timedelta(hours=window_hours)
    # Same key dtypes on both sides (pandas 3 would otherwise infer its string dtype for one of them).
    left = studies[["patient_id", "study_datetime"]].astype({"patient_id": object, "study_datetime": "datetime64[ns]"})
    left["study_index"] = studies.index
    left = left.sort_values("study_datetime", kind="stable")
    paired: dict[str, pd.DataFrame] = {}
    for test, table in labs.by_test.items():
        right = table.astype({"patient_id": object}).sort_values(["lab_datetime", "labs_row"], kind="stable")
        right = right.assign(lab_time=right["lab_datetime"])
        merged = pd.merge_asof(
            left,
            right,
            left_on="study_datetime",
            right_on="lab_datetime",
            by="patient_id",
            direction="nearest",
            tolerance=tolerance,
        ).set_index("study_index")
        hours = (merged["lab_time"] - merged["study_datetime"]).dt.total_seconds() / 3600.0
        paired[test] = pd.DataFrame(
            {
                "value": merged["value"].astype(float),
                "censored": merged["censored"].fillna(0).astype(int),
                "labs_row": merged["labs_row"],
                "hours_from_study": hours.astype(float),
            }
        ).reindex(studies.index)
        paired[test].loc[paired[test]["value"].isna(), "hours_from_study"] = np.nan
    return paired
