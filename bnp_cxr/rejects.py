"""Rejects: one input (manifest row, labs row, image, image/mask pair) that was not used, and why.

Every stage reports what it skips as a `Reject`; ingest writes them to rejects.csv (columns
REJECT_FIELDS, documented in data_manifests/README.md). Only the fields that a stage knows are set:
a decode worker knows reason, column and detail, and the writer adds the manifest's name and row.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Iterable

REJECT_FIELDS = ("source", "row", "image_path", "stage", "reason", "column", "detail")  # rejects.csv columns


@dataclass(frozen=True, kw_only=True)
class Reject:
    """One input that was not used: where it came from (optional), the stage, a stable reason code and a detail."""

    source: str = ""  # file name of the manifest, labs table or mask index that lists the input
    row: int | None = None  # CSV line number (header = 1)
    image_path: str = ""  # as listed (relative to the listing CSV's folder) or as given on the command line
    stage: str = ""  # "manifest", "labs" or "image"
    reason: str  # short stable code
    column: str = ""  # the column (or columns, comma-separated) at fault
    detail: str = ""
    mask_path: str = ""  # the mask paired with image_path, for image/mask pairs; not a rejects.csv column

    def as_row(self) -> dict:
        """The rejects.csv row: REJECT_FIELDS in order."""
        return {name: getattr(self, name) for name in REJECT_FIELDS}


def rejects_csv(rejects: Iterable[Reject]) -> str:
    """rejects.csv's text: a header of REJECT_FIELDS, then one line per reject (CSV dialect, CRLF line ends)."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=REJECT_FIELDS)
    writer.writeheader()
    writer.writerows(reject.as_row() for reject in rejects)
    return table.getvalue()
