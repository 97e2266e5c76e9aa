"""Shenzhen TB set (Jaeger et al. 2014, Quant Imaging Med Surg 4(6):475) as a standard bnp-cxr manifest.

The layout is the one in ../shared/data/lungs/shenzhen: index.csv (id, image, mask, tb), images/ and
masks/ (manual lung masks, Stirenko et al. 2018). tb=1 maps to the stand-in labs BNPP 2000 / BNP 500
pg/mL, tb=0 to 100 / 30 (bnp_cxr.data.sources.common), so positive = tb; `tb` is also written as a
finding column.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnp_cxr.data.sources.common import (BASE_COLUMNS, STAND_IN_PG_ML, Dataset, SourceManifest, link_dataset,
                                         read_table, source_reject, stand_in_labs, write_source)

DATASET = Dataset("Shenzhen TB", "stand-in",
                  "Shenzhen TB set (tools/make_manifest.py shenzhen): stand-in labs from its tuberculosis label "
                  "(tb -> BNPP 2000 / BNP 500 pg/mL, else 100 / 30), not measured BNP")
SHENZHEN_INDEX = "index.csv"
SHENZHEN_INDEX_COLUMNS = ("id", "image", "mask", "tb")
SHENZHEN_STAND_IN_PG_ML = STAND_IN_PG_ML
MANIFEST_COLUMNS = (*BASE_COLUMNS, "lung_mask_path")
FINDING_COLUMNS = ("tb",)


def read_shenzhen_index(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of the Shenzhen index.csv (id, image, mask, tb); a clear error when the file or a column is missing."""
    index = Path(dataset_dir) / SHENZHEN_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: is {dataset_dir} the Shenzhen folder "
                                "(index.csv, images/, masks/)?")
    return read_table(index, SHENZHEN_INDEX_COLUMNS)


def _problem(row: dict[str, str], seen: set[str], root: Path) -> tuple[str, str, str] | None:
    """(reason, column, detail) when an index row cannot become a manifest row, else None."""
    if not row["id"]:
        return "missing_id", "id", "empty id"
    if row["id"] in seen:
        return "duplicate_id", "id", f"id {row['id']!r} is repeated"
    if row["tb"] not in ("0", "1"):
        return "bad_label", "tb", f"tb {row['tb']!r} is not 0 or 1"
    if not row["image"] or not (root / row["image"]).is_file():
        return "missing_image", "image", f"image {row['image']!r} not found"
    return None


def write_shenzhen_manifest(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                            link_name: str = "shenzhen", with_masks: bool = True,
                            with_bnp: bool = True) -> SourceManifest:
    """Write out_dir/manifest.csv and rejects.csv for the Shenzhen TB set through a symlink out_dir/link_name.

    Stand-in labels (a pipeline check that training learns from real images, NOT a BNP model); with_bnp=False
    leaves BNP empty. patient_id is the image id (one image per patient), so the records' hashed 80/10/10
    patient split applies; study_datetime is empty (no labs table to pair). Rows with an empty or repeated id,
    a tb other than 0 / 1 or a missing image go to rejects.csv, the rest to the manifest. Deterministic.
    """
    link = link_dataset(dataset_dir, out_dir, link_name)
    rows, rejects, seen = [], [], set()
    for line, row in enumerate(read_shenzhen_index(link), start=2):
        problem = _problem(row, seen, link)
        seen.add(row["id"])
        if problem:
            rejects.append(source_reject(SHENZHEN_INDEX, line, row["image"], *problem))
            continue
        rows.append({"patient_id": row["id"], "image_path": f"{link_name}/{row['image']}", "study_datetime": "",
                     **stand_in_labs(int(row["tb"]), with_bnp=with_bnp),
                     "lung_mask_path": f"{link_name}/{row['mask']}" if with_masks and row["mask"] else "",
                     "tb": row["tb"]})
    return write_source(out_dir, rows, rejects, MANIFEST_COLUMNS, FINDING_COLUMNS, DATASET)
