"""NIH ChestX-ray14 (Wang et al., CVPR 2017; NIH Clinical Center) as a standard bnp-cxr manifest.

Two layouts are read: the release (`Data_Entry_2017*.csv` with Image Index, Finding Labels, Patient ID,
View Position, and the PNGs under images/ or images_NNN/images/) and the subset in ../shared/data/nih
(`labels.csv` with image, patient_id, view, finding_labels and 0/1 finding columns, PNGs in images/).
Stand-in labs: any radiographic sign of heart failure (cardiomegaly, edema or effusion:
bnp_cxr.workspace.HEART_FAILURE_FINDINGS) maps to BNPP 2000 / BNP 500 pg/mL, none to 100 / 30. Every
finding becomes a 0/1 column (the NLP-mined report labels, > 90 % accurate), so evaluate.py shows which
sign a model reads. The labels are partly circular with the stand-in, which is built from three of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnp_cxr.data.sources.common import (BASE_COLUMNS, Dataset, SourceManifest, link_dataset, read_header,
                                         read_table, source_reject, stand_in_labs, write_source)
from bnp_cxr.workspace import HEART_FAILURE_FINDINGS, LATERAL_VIEWS

DATASET = Dataset("NIH ChestX-ray14", "stand-in",
                  "NIH ChestX-ray14 (tools/make_manifest.py nih): stand-in labs from its report-mined findings "
                  "(cardiomegaly, edema or effusion -> BNPP 2000 / BNP 500 pg/mL, else 100 / 30), not measured BNP")
# Finding names as released -> manifest finding columns (bnp_cxr.workspace.FINDINGS).
NIH_FINDINGS = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
                "Edema": "edema", "Effusion": "effusion", "Emphysema": "emphysema", "Fibrosis": "fibrosis",
                "Hernia": "hernia", "Infiltration": "infiltration", "Mass": "mass", "Nodule": "nodule",
                "Pleural_Thickening": "pleural_thickening", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
                "No Finding": "no_finding"}
FINDING_COLUMNS = tuple(NIH_FINDINGS.values())
FRONTAL_VIEWS = frozenset({"PA", "AP"})
MANIFEST_COLUMNS = (*BASE_COLUMNS, "view")
# (image, patient, view, findings) column names of each layout's label file.
RELEASE_COLUMNS = ("Image Index", "Patient ID", "View Position", "Finding Labels")
SUBSET_COLUMNS = ("image", "patient_id", "view", "finding_labels")
SUBSET_LABELS = "labels.csv"


def find_label_file(dataset_dir: Path) -> Path:
    """The dataset's label file: labels.csv (the shared subset) or the newest Data_Entry_2017*.csv (the release)."""
    if (dataset_dir / SUBSET_LABELS).is_file():
        return dataset_dir / SUBSET_LABELS
    entries = sorted(dataset_dir.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise FileNotFoundError(f"{dataset_dir}: neither {SUBSET_LABELS} nor Data_Entry_2017*.csv found: is it "
                                "the ChestX-ray14 folder?")
    return entries[-1]  # Data_Entry_2017_v2020.csv sorts after Data_Entry_2017.csv


def index_images(dataset_dir: Path) -> dict[str, str]:
    """{file name: path relative to dataset_dir} for the PNGs under images/ and images_NNN/images/."""
    found: dict[str, str] = {}
    for path in sorted(dataset_dir.glob("images*/**/*.png")):
        found.setdefault(path.name, path.relative_to(dataset_dir).as_posix())
    return found


def parse_findings(text: str, columns: dict[str, str]) -> tuple[dict[str, int], str]:
    """({finding column: 0/1}, problem) from '|'-separated release names; problem is '' when the cell is valid."""
    names = [name.strip() for name in text.split("|") if name.strip()]
    unknown = [name for name in names if name not in NIH_FINDINGS]
    if not names or unknown:
        return {}, f"unknown finding(s) {unknown or [text]}; known: {sorted(NIH_FINDINGS)}"
    present = {NIH_FINDINGS[name] for name in names}
    if "no_finding" in present and len(present) > 1:
        return {}, f"'No Finding' listed with other findings: {text!r}"
    values = {column: int(column in present) for column in FINDING_COLUMNS}
    # The shared subset also has 0/1 columns for some findings: they must agree with the names.
    disagree = [column for column, cell in columns.items() if cell not in ("", str(values[column]))]
    return values, (f"finding column(s) {disagree} disagree with {text!r}" if disagree else "")


def _row(row: dict[str, str], keys: tuple[str, ...], images: dict[str, str], seen: set[str], link_name: str,
         with_bnp: bool) -> dict[str, str] | tuple[str, str, str]:
    """A manifest row, or (reason, column, detail) why the label row cannot be one."""
    image_key, patient_key, view_key, findings_key = keys
    image, patient, view = row[image_key], row[patient_key], row[view_key].upper()
    if not patient:
        return "missing_patient_id", patient_key, "empty patient id"
    if image in seen:
        return "duplicate_image", image_key, f"image {image!r} is listed more than once"
    if view not in FRONTAL_VIEWS:
        kind = "lateral" if view in LATERAL_VIEWS else "not PA or AP"
        return "non_frontal_view", view_key, f"view {row[view_key]!r} is {kind}"
    columns = {column: row[column] for column in FINDING_COLUMNS if column in row}
    findings, problem = parse_findings(row[findings_key], columns)
    if problem:
        return ("conflicting_finding" if findings else "unknown_finding"), findings_key, problem
    if image not in images:
        return "missing_image", image_key, f"image {image!r} not found under images*/"
    heart_failure = int(any(findings[name] for name in HEART_FAILURE_FINDINGS))
    return {"patient_id": patient, "image_path": f"{link_name}/{images[image]}", "study_datetime": "",
            **stand_in_labs(heart_failure, with_bnp=with_bnp), "view": view,
            **{column: str(value) for column, value in findings.items()}}


def write_nih_manifest(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                       labels: str | os.PathLike | None = None, link_name: str = "nih",
                       with_bnp: bool = True, split: str | None = None) -> SourceManifest:
    """Write out_dir/manifest.csv and rejects.csv for a ChestX-ray14 folder through a symlink out_dir/link_name.

    labels: the label file (default: labels.csv, else Data_Entry_2017*.csv in the folder). Rows with a missing
    patient id, a repeated image, a view other than PA / AP, an unknown or contradictory finding, or an image not
    on disk go to rejects.csv with the reason; the rest keep their order in the manifest. split: every row in it
    (common.write_source). Deterministic.
    """
    link = link_dataset(dataset_dir, out_dir, link_name)
    label_file = Path(labels) if labels else find_label_file(link)
    keys = RELEASE_COLUMNS if RELEASE_COLUMNS[0] in read_header(label_file) else SUBSET_COLUMNS
    images, rows, rejects, seen = index_images(link), [], [], set()
    for line, row in enumerate(read_table(label_file, keys), start=2):
        result = _row(row, keys, images, seen, link_name, with_bnp)
        seen.add(row[keys[0]])
        if isinstance(result, tuple):
            rejects.append(source_reject(label_file.name, line, row[keys[0]], *result))
        else:
            rows.append(result)
    return write_source(out_dir, rows, rejects, MANIFEST_COLUMNS, FINDING_COLUMNS, DATASET, split)
