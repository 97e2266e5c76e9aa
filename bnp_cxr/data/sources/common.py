"""What every public-dataset source shares: the dataset link, stand-in labs, and the manifest + rejects writers.

Public datasets carry no BNP / NT-proBNP labs. What they do carry is a real image-level label, which a
source maps to a documented *stand-in* lab value so the unchanged pipeline (make_tfrecords -> train ->
evaluate) can show what it learns from real radiographs. A model trained on such a manifest is a
pipeline check, never a BNP model. Each source also writes its findings as binary manifest columns
(bnp_cxr.workspace.FINDINGS), so evaluate.py scores predicted BNPP against each one.

The dataset is never copied: the manifest folder holds a symlink to it, and the manifest's relative
paths go through that link (the manifest schema requires paths inside the manifest's folder).
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.rejects import Reject, rejects_csv
from bnp_cxr.workspace import BNP_THRESHOLD_PG_ML, BNPP_THRESHOLD_PG_ML, SPLITS

MANIFEST_NAME = "manifest.csv"
REJECTS_NAME = "rejects.csv"
DATASET_NAME = "dataset.json"  # beside the manifest: which source wrote it and whether its labs are measured
LAB_KINDS = ("stand-in", "measured")
BASE_COLUMNS = ("patient_id", "image_path", "study_datetime", "bnp", "bnpp")
# Stand-in labs (pg/mL) per binary label, each >= 0.5 log10 above / below its positivity threshold
# (BNPP 400, BNP 100), so 'positive' equals the label and each target is a clean two-level step.
STAND_IN_PG_ML: Mapping[str, Mapping[int, float]] = {"bnpp": {1: 2000.0, 0: 100.0}, "bnp": {1: 500.0, 0: 30.0}}
THRESHOLDS_PG_ML = {"bnpp": BNPP_THRESHOLD_PG_ML, "bnp": BNP_THRESHOLD_PG_ML}
SOURCE_STAGE = "source"  # the `stage` of a dataset row that did not become a manifest row


@dataclass(frozen=True)
class SourceManifest:
    """What a source writer produced: the manifest, its rejects report and the finding columns it carries."""

    manifest: Path
    rejects: Path
    n_rows: int
    n_rejected: int
    findings: tuple[str, ...]


def link_dataset(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, link_name: str) -> Path:
    """Create out_dir with a symlink `link_name` -> dataset_dir (reused if it already points there); returns it."""
    target = Path(dataset_dir).resolve()
    if not target.is_dir():
        raise FileNotFoundError(f"dataset folder {dataset_dir} not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    link = out / link_name
    if link.is_symlink() or link.exists():
        if not (link.is_symlink() and link.resolve() == target):
            raise FileExistsError(f"{link} exists and is not a link to {target}; choose another folder")
        return link
    # Absolute target: the manifest folder may live anywhere (a temp dir, work/).
    link.symlink_to(target, target_is_directory=True)
    return link


def stand_in_labs(label: int, *, with_bnp: bool = True) -> dict[str, str]:
    """The manifest's bnp / bnpp cells for a binary label (BNP empty when with_bnp is False)."""
    return {"bnp": f"{STAND_IN_PG_ML['bnp'][label]:g}" if with_bnp else "",
            "bnpp": f"{STAND_IN_PG_ML['bnpp'][label]:g}"}


def read_header(path: Path) -> list[str]:
    """The column names of a UTF-8 CSV (stripped); a clear error when the file is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def read_table(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV (cells stripped); a clear error naming the file when a required column is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        found = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in required if column not in found]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {found}")
        return [{key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
                for row in reader]


def write_csv(rows: Iterable[Mapping[str, object]], path: Path, columns: Sequence[str]) -> Path:
    """Write rows (missing keys -> empty cells) as UTF-8 CSV, atomically; returns the path."""
    with atomic_path(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return path


def source_reject(label_file: str, row: int, image_path: str, reason: str, column: str, detail: str) -> Reject:
    """The Reject of a dataset row that did not become a manifest row (stage "source")."""
    return Reject(source=label_file, row=row, image_path=image_path, stage=SOURCE_STAGE, reason=reason,
                  column=column, detail=detail)


@dataclass(frozen=True)
class Dataset:
    """What a source's manifest holds, for the run reports: the dataset and whether its labs are measured."""

    name: str
    labs: str  # one of LAB_KINDS
    description: str  # one sentence for a reader of the report

    def __post_init__(self) -> None:
        if self.labs not in LAB_KINDS:
            raise ValueError(f"labs must be one of {LAB_KINDS}, got {self.labs!r}")


def write_source(out_dir: str | os.PathLike, rows: list[dict[str, str]], rejects: list[Reject],
                 columns: Sequence[str], findings: Sequence[str], dataset: Dataset,
                 split: str | None = None) -> SourceManifest:
    """Write out_dir/manifest.csv (columns + finding columns), rejects.csv (always, maybe empty) and dataset.json.

    split: every row in that split (a `split` column; e.g. "test" for another site's films that a model trained
    elsewhere is evaluated on); None leaves the records' hashed patient split.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = Path(out_dir)
    if split is not None:
        columns, rows = [*columns, "split"], [{**row, "split": split} for row in rows]
    manifest = write_csv(rows, out / MANIFEST_NAME, [*columns, *findings])
    report = out / REJECTS_NAME
    with atomic_path(report) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        handle.write(rejects_csv(rejects))
    write_json(out / DATASET_NAME, asdict(dataset))
    return SourceManifest(manifest, report, len(rows), len(rejects), tuple(findings))
