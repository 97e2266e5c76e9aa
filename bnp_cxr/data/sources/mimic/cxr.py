"""The MIMIC-CXR side: which images exist, their view and study time, CheXpert findings and the official split.

The metadata CSV (MIMIC-CXR-JPG) gives ViewPosition, StudyDate and StudyTime per dicom_id; the DICOM release
without it is read from cxr-record-list.csv.gz and each file's header. StudyTime in the CSV is a float that lost
its leading zeros (`4512.0` is 00:45:12) and sometimes its fraction; dates are shifted into the 22nd century.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Sequence

import pandas as pd

from bnp_cxr.data.sources.mimic import schema

IMAGE_COLUMNS = ("row", "dicom_id", "subject_id", "study_id", "view", "date", "time", "path", "header_error")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
CHEXPERT_VALUES = {"1.0": "1", "1": "1", "0.0": "0", "0": "0", "-1.0": "", "-1": "", "": ""}
_DATE = re.compile(r"^(\d{8})(\.0*)?$")
_TIME = re.compile(r"^(\d{1,6})(\.(\d*))?$")


def read_csv_checked(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A (gzipped) CSV as stripped strings; a clear error naming the file and any missing required column."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame.apply(lambda column: column.str.strip())


def parse_study_datetime(date: str, time: str) -> datetime:
    """StudyDate (YYYYMMDD, maybe as a float) + StudyTime (HHMMSS[.ffffff], maybe a float without leading zeros)."""
    date_match, time_match = _DATE.match(date.strip()), _TIME.match(time.strip())
    if not date_match or not time_match:
        raise ValueError(f"StudyDate {date!r} / StudyTime {time!r} is not YYYYMMDD / HHMMSS[.ffffff]")
    fraction = (time_match[3] or "")[:6].ljust(6, "0")
    try:
        parsed = datetime.strptime(date_match[1] + time_match[1].zfill(6), "%Y%m%d%H%M%S")
    except ValueError:
        raise ValueError(f"StudyDate {date!r} / StudyTime {time!r} is not a valid date and time") from None
    return parsed.replace(microsecond=int(fraction))


def image_format(cxr_root: Path, images: str) -> str:
    """'jpg' or 'dcm': as asked, else 'dcm' when the DICOM release's record list is there, else 'jpg'."""
    if images != "auto":
        return {"jpg": "jpg", "dicom": "dcm", "dcm": "dcm"}[images]
    return "dcm" if (cxr_root / schema.RECORD_LIST).is_file() else "jpg"


def load_images(cxr_root: Path, suffix: str, *, progress: bool = False) -> tuple[pd.DataFrame, str]:
    """(one row per listed image with IMAGE_COLUMNS, the file it came from): metadata CSV, else DICOM headers."""
    metadata, records = cxr_root / schema.METADATA, cxr_root / schema.RECORD_LIST
    if metadata.is_file():
        frame = read_csv_checked(metadata, schema.METADATA_REQUIRED)
        frame = frame.rename(columns={"ViewPosition": "view", "StudyDate": "date", "StudyTime": "time"})
        paths = [schema.image_path(s, t, d, suffix)
                 for s, t, d in zip(frame["subject_id"], frame["study_id"], frame["dicom_id"])]
        if suffix == "dcm" and records.is_file():  # the record list names the DICOM files as released
            listed = read_csv_checked(records, schema.RECORD_LIST_COLUMNS)
            released = dict(zip(listed["dicom_id"], listed["path"]))
            paths = [released.get(dicom_id, path) for dicom_id, path in zip(frame["dicom_id"], paths)]
        frame = frame.assign(path=paths, header_error="", row=range(2, len(frame) + 2))
        return frame[list(IMAGE_COLUMNS)], metadata.name
    if suffix != "dcm" or not records.is_file():
        raise FileNotFoundError(f"{metadata} not found (and no {schema.RECORD_LIST} of the DICOM release to read "
                                "headers from): is --cxr the MIMIC-CXR(-JPG) folder?")
    frame = read_csv_checked(records, schema.RECORD_LIST_COLUMNS)
    headers = [read_header(cxr_root / path) for path in _progress(frame["path"], progress, "DICOM headers")]
    frame = frame.assign(row=range(2, len(frame) + 2), **{key: [header[key] for header in headers]
                                                         for key in ("view", "date", "time", "header_error")})
    return frame[list(IMAGE_COLUMNS)], records.name


def read_header(path: Path) -> dict[str, str]:
    """ViewPosition, StudyDate and StudyTime of a DICOM file (pixels not read); header_error says why not."""
    import pydicom

    empty = {"view": "", "date": "", "time": ""}
    if not path.is_file():
        return {**empty, "header_error": "missing"}
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ViewPosition", "StudyDate", "StudyTime"])
    except Exception as error:  # noqa: BLE001 - any unreadable header is a reject, not a crash
        return {**empty, "header_error": f"unreadable header: {type(error).__name__}"}
    return {"view": str(ds.get("ViewPosition", "") or ""), "date": str(ds.get("StudyDate", "") or ""),
            "time": str(ds.get("StudyTime", "") or ""), "header_error": ""}


def _progress(items, progress: bool, what: str):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="file")


def read_findings(cxr_root: Path) -> tuple[dict[tuple[str, str], dict[str, str]], tuple[str, ...]]:
    """({(subject_id, study_id): {finding column: '1' / '0' / ''}}, finding columns) from the CheXpert file.

    Uncertain (-1.0) and blank (not mentioned) become empty cells; absent file: ({}, ()).
    """
    path = cxr_root / schema.CHEXPERT
    if not path.is_file():
        return {}, ()
    frame = read_csv_checked(path, schema.CHEXPERT_REQUIRED)
    labels = [label for label in schema.CHEXPERT_LABELS if label in frame.columns]
    findings = {}
    for line, record in enumerate(frame.to_dict("records"), start=2):
        cells = {}
        for label in labels:
            if record[label] not in CHEXPERT_VALUES:
                raise ValueError(f"{path}: row {line}, column {label!r}: {record[label]!r} is not 1.0, 0.0, -1.0 or "
                                 "empty")
            cells[schema.CHEXPERT_LABELS[label]] = CHEXPERT_VALUES[record[label]]
        findings[(record["subject_id"], record["study_id"])] = cells
    return findings, tuple(schema.CHEXPERT_LABELS[label] for label in labels)


def read_official_split(cxr_root: Path) -> dict[str, str]:
    """{dicom_id: train / val / test} from the official split file (validate -> val)."""
    path = cxr_root / schema.SPLIT
    frame = read_csv_checked(path, schema.SPLIT_COLUMNS)
    unknown = sorted(set(frame["split"]) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"{path}: column 'split' has value(s) {unknown}; expected {sorted(SPLIT_NAMES)}")
    return dict(zip(frame["dicom_id"], frame["split"].map(SPLIT_NAMES)))
