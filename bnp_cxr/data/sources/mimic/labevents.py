"""The MIMIC-IV side: NT-proBNP / BNP item IDs from d_labitems, and labevents streamed in bounded memory.

labevents has ~118 M rows (~2 GB gzipped). It is read in blocks with pyarrow's streaming CSV reader, only the
columns needed; each block keeps the rows of the chosen item IDs, then those of patients with radiographs,
which go straight to labs.csv, so memory holds a few blocks whatever the sizes of input and output. Values map
to the project's lab strings (bnp_cxr.data.labs):
`<50` and `>35000` stay censored, `___` (de-identified), empty or non-numeric values and units other than
pg/mL are set aside with the reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from bnp_cxr.data.labs import LabValueError, parse_datetime, parse_lab_value
from bnp_cxr.files import atomic_path
from bnp_cxr.data.sources.common import source_reject
from bnp_cxr.data.sources.mimic import schema
from bnp_cxr.data.sources.mimic.cxr import read_csv_checked
from bnp_cxr.rejects import Reject

# d_labitems labels (lower case, letters and digits only) of each test, as MIMIC-IV and other sites spell them.
LABELS = {"BNPP": ("ntprobnp", "nterminalprobnp", "ntprobrainnatriureticpeptide", "probnp"),
          "BNP": ("bnp", "bnatriureticpeptide", "brainnatriureticpeptide", "btypenatriureticpeptide")}
PG_ML = "pg/ml"
LABS_COLUMNS = ("patient_id", "lab_datetime", "test", "value")  # the labs table of data_manifests/README.md
# Per parsed block. The reader parses blocks ahead of this loop; with larger blocks (8 MiB) the queue's memory
# grew with the file on a loaded machine (bench/mimic.py), with 1 MiB it stays flat at no cost in speed.
BLOCK_BYTES = 1 << 20
_COLUMN_TYPES = {"subject_id": "int64", "itemid": "int64", "charttime": "string", "value": "string",
                 "valuenum": "string", "valueuom": "string"}


@dataclass
class LabScan:
    """What streaming labevents wrote and set aside: rejected lab rows and the counts of the flow report."""

    labs_csv: Path
    rejects: list[Reject] = field(default_factory=list)
    rows_read: int = 0
    chosen_items: int = 0  # rows of the chosen item IDs, any patient
    with_radiographs: int = 0  # ... of patients with radiographs
    usable: dict[str, int] = field(default_factory=dict)  # per test
    unusable: dict[str, int] = field(default_factory=dict)  # per reason


def _normal(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower())


def choose_items(iv_root: Path, overrides: Mapping[str, Iterable[int]] | None = None) -> dict[int, str]:
    """{itemid: 'BNPP' / 'BNP'}: the overrides when given (they are the whole choice), else the d_labitems rows
    whose label names a test."""
    path = iv_root / schema.D_LABITEMS
    items = read_csv_checked(path, schema.D_LABITEMS_REQUIRED)
    known = set(items["itemid"])
    overrides = {test: list(given) for test, given in (overrides or {}).items() if given}
    for test, given in overrides.items():
        missing = [itemid for itemid in given if str(itemid) not in known]
        if missing:
            raise ValueError(f"{path}: --itemid {test}={missing[0]} is not an itemid of this file")
    chosen = {int(itemid): test for test, given in overrides.items() for itemid in given}
    if not overrides:  # no override: every item whose label names a test
        chosen = {int(itemid): test for itemid, label in zip(items["itemid"], items["label"])
                  for test, labels in LABELS.items() if _normal(label) in labels}
    if not chosen:
        raise ValueError(f"{path}: no item labelled NT-proBNP or BNP; name one with --itemid BNPP=ID")
    return chosen


def describe_items(iv_root: Path, chosen: Mapping[int, str]) -> list[str]:
    """One line per chosen item: test, itemid and its d_labitems label, fluid and category."""
    items = read_csv_checked(iv_root / schema.D_LABITEMS, schema.D_LABITEMS_REQUIRED).set_index("itemid")
    lines = []
    for itemid, test in sorted(chosen.items(), key=lambda pair: (pair[1], pair[0])):
        row = items.loc[str(itemid)]
        where = ", ".join(str(row[column]) for column in ("fluid", "category") if column in items.columns)
        lines.append(f"{test}: itemid {itemid} {row['label']!r}" + (f" ({where})" if where else ""))
    return lines


def lab_text(value: str, valuenum: str, unit: str) -> tuple[str, str, str]:
    """(labs.csv value, '', '') or ('', reason, detail) for one labevents result in pg/mL."""
    text, number = value.strip(), valuenum.strip()
    if unit.strip() and _normal(unit) != _normal(PG_ML):
        return "", "unit_not_pg_ml", f"valueuom {unit!r} is not pg/mL"
    # A censored text wins over valuenum, which holds only the bound.
    candidate = text if text.startswith(("<", ">")) or not number else number
    if not candidate:
        return "", "empty_value", "value and valuenum are empty"
    if set(candidate) == {"_"}:
        return "", "deidentified_value", f"value {text!r} was removed by de-identification and valuenum is empty"
    try:
        parse_lab_value(candidate)
    except LabValueError as error:
        return "", "bad_value", str(error)
    return candidate.replace(" ", ""), "", ""


def read_header(path: Path) -> list[str]:
    """The column names of a CSV, gzipped or not."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


class _CountingReader(io.RawIOBase):
    """A binary file that advances a progress bar by the bytes read from it."""

    def __init__(self, path: Path, bar) -> None:
        super().__init__()
        self._handle, self._bar = open(path, "rb"), bar  # noqa: SIM115 - closed by close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._handle.readinto(buffer)
        self._bar.update(count)
        return count

    def close(self) -> None:
        self._handle.close()
        self._bar.close()
        super().close()


def _input_stream(path: Path, progress: bool):
    """pyarrow input stream of the file, decompressed; with a progress bar over the (compressed) bytes read."""
    import pyarrow as pa

    if not progress:
        return pa.input_stream(str(path), compression="detect")
    from tqdm import tqdm

    raw = pa.PythonFile(_CountingReader(path, tqdm(total=path.stat().st_size, desc=path.name, unit="B",
                                                   unit_scale=True)), mode="r")
    return pa.CompressedInputStream(raw, "gzip") if path.suffix == ".gz" else raw


def stream_labevents(path: Path, itemids: Mapping[int, str], subjects: set[int], labs_csv: Path, *,
                     progress: bool = False, block_bytes: int = BLOCK_BYTES) -> LabScan:
    """Stream labevents into labs_csv (the usable results of the chosen items for these subjects) as it is read;
    returns the rejects and counts. Memory: a few blocks, whatever the sizes of the input and of labs_csv."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as pacsv

    found = read_header(path)
    missing = [column for column in schema.LABEVENTS_REQUIRED if column not in found]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {found}")
    stream = _input_stream(path, progress)
    reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block_bytes),
                            convert_options=pacsv.ConvertOptions(
                                include_columns=list(_COLUMN_TYPES), strings_can_be_null=False,
                                column_types={name: getattr(pa, kind)() for name, kind in _COLUMN_TYPES.items()}))
    value_set = pa.array(sorted(itemids), pa.int64())
    scan = LabScan(labs_csv, usable={test: 0 for test in sorted(set(itemids.values()))})
    with atomic_path(labs_csv) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABS_COLUMNS)
        try:
            for batch in reader:
                chosen = pc.is_in(batch.column("itemid"), value_set=value_set)
                offsets = pc.indices_nonzero(chosen).to_pylist()
                for offset, record in zip(offsets, batch.filter(chosen).to_pylist()):
                    row = _keep(scan, record, scan.rows_read + offset + 2, itemids, subjects, path.name)
                    if row:
                        writer.writerow(row)
                scan.rows_read += batch.num_rows
                scan.chosen_items += len(offsets)
        finally:
            stream.close()
    return scan


def _keep(scan: LabScan, record: dict, row: int, itemids: Mapping[int, str], subjects: set[int],
          source: str) -> tuple[str, ...] | None:
    """Count one result of a chosen item: its labs.csv row, or None (a reject, or a patient without radiographs)."""
    if record["subject_id"] not in subjects:
        return None
    scan.with_radiographs += 1
    test = itemids[record["itemid"]]
    text, reason, detail = lab_text(record["value"], record["valuenum"], record["valueuom"])
    if not reason:
        try:
            parse_datetime(record["charttime"])
        except LabValueError as error:
            reason, detail = "bad_charttime", str(error)
    if reason:
        scan.unusable[reason] = scan.unusable.get(reason, 0) + 1
        column = "charttime" if reason == "bad_charttime" else "valueuom" if reason == "unit_not_pg_ml" else "value"
        scan.rejects.append(source_reject(source, row, "", reason, column, f"{test}: {detail}"))
        return None
    scan.usable[test] += 1
    return str(record["subject_id"]), record["charttime"], test, text
