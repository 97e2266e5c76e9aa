"""Standard bnp-cxr manifests for public chest radiograph datasets (data_manifests/README.md schema).

Public datasets carry no BNP / NT-proBNP labs. What they do carry is a real image-level label, which
is mapped here to a documented *stand-in* lab value so the unchanged pipeline (make_tfrecords ->
train -> evaluate) can show that it learns something from real radiographs. A model trained on such
a manifest is a pipeline check, never a BNP model.

The dataset is never copied: the manifest folder holds a symlink to it, and the manifest's relative
paths go through that link (the manifest schema requires paths inside the manifest's folder).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Mapping

from bnp_cxr.files import atomic_path

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("patient_id", "image_path", "study_datetime", "bnp", "bnpp", "lung_mask_path")
SHENZHEN_INDEX = "index.csv"
SHENZHEN_INDEX_COLUMNS = ("id", "image", "mask", "tb")
# Stand-in labs (pg/mL) per Shenzhen tb label, each ~0.7 log10 above / >= 0.5 below its positivity
# threshold (BNPP 400, BNP 100), so 'positive' = tb and each target is a clean two-level step.
SHENZHEN_STAND_IN_PG_ML: Mapping[str, Mapping[int, float]] = {"bnpp": {1: 2000.0, 0: 100.0},
                                                                "bnp": {1: 500.0, 0: 30.0}}


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


def write_manifest(rows: Iterable[Mapping[str, str]], path: str | os.PathLike,
                   columns: tuple[str, ...] = MANIFEST_COLUMNS) -> Path:
    """Write manifest rows (dicts keyed by `columns`; missing keys -> empty cells) as UTF-8 CSV; returns the path."""
    path = Path(path)
    with atomic_path(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_shenzhen_index(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of the Shenzhen index.csv (id, image, mask, tb), checked: unique ids, tb in {0, 1}."""
    index = Path(dataset_dir) / SHENZHEN_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: is {dataset_dir} the Shenzhen folder "
                                "(index.csv, images/, masks/)?")
    with open(index, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in SHENZHEN_INDEX_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{index}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = [{key: row[key].strip() for key in SHENZHEN_INDEX_COLUMNS} for row in reader]
    problems, seen = [], set()
    for line, row in enumerate(rows, start=2):
        if row["tb"] not in ("0", "1"):
            problems.append(f"line {line}: tb {row['tb']!r} is not 0 or 1")
        if not row["id"] or row["id"] in seen:
            problems.append(f"line {line}: id {row['id']!r} is empty or repeated")
        seen.add(row["id"])
    if problems:
        raise ValueError(f"{index}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    return rows


def write_shenzhen_manifest(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                            link_name: str = "shenzhen", with_masks: bool = True, with_bnp: bool = True) -> Path:
    """Write out_dir/manifest.csv for the Shenzhen TB set through a symlink out_dir/link_name -> dataset_dir.

    Stand-in labels (a pipeline check that training learns from real images, NOT a BNP model): BNPP =
    2000 pg/mL and BNP = 500 pg/mL for tuberculosis (tb=1), BNPP = 100 and BNP = 30 pg/mL for normal
    (tb=0); so positive (BNPP > 400 or BNP > 100) exactly when tb=1. with_bnp=False leaves BNP empty
    (BNPP only). Deterministic: the same index gives the same manifest. patient_id is the
    image id (one image per patient; Jaeger et al. 2014, Quant Imaging Med Surg 4(6):475), so the records'
    hashed 80/10/10 patient split applies. study_datetime is empty (no labs table to pair). Lung masks
    (Stirenko et al. 2018) go in lung_mask_path unless with_masks=False.
    """
    link = link_dataset(dataset_dir, out_dir, link_name)
    rows = [{"patient_id": row["id"], "image_path": f"{link_name}/{row['image']}", "study_datetime": "",
             "bnp": f"{SHENZHEN_STAND_IN_PG_ML['bnp'][int(row['tb'])]:g}" if with_bnp else "",
             "bnpp": f"{SHENZHEN_STAND_IN_PG_ML['bnpp'][int(row['tb'])]:g}",
             "lung_mask_path": f"{link_name}/{row['mask']}" if with_masks and row["mask"] else ""}
            for row in read_shenzhen_index(link)]
    return write_manifest(rows, Path(out_dir) / MANIFEST_NAME)
