"""The NLM tuberculosis sets (Jaeger et al. 2014, Quant Imaging Med Surg 4(6):475) as standard bnp-cxr manifests.

Shenzhen No.3 People's Hospital (CHNCXR_*) and Montgomery County, Maryland (MCUCXR_*) share two layouts:

- an index: index.csv (id, image, tb; optional mask) beside the images, as in ../shared/data/lungs/shenzhen
  (images/, masks/: manual lung masks, Stirenko et al. 2018);
- the release: CXR_png/<prefix>_<number>_<tb>.png, the digit before .png being the label (1 = tuberculosis,
  0 = normal), with ClinicalReadings/ beside it (not needed here). Its masks are left out: Montgomery's come
  as one file per lung (ManualMask/leftMask, rightMask) and Shenzhen's release has none; the lung U-Net
  (bnp_cxr.lungs) segments them instead.

tb=1 maps to the stand-in labs BNPP 2000 / BNP 500 pg/mL, tb=0 to 100 / 30 (bnp_cxr.data.sources.common), so
positive = tb; `tb` is also written as a finding column. Every listed row or released file becomes a manifest
row or a reject with the reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from bnp_cxr.data.sources.common import (BASE_COLUMNS, Dataset, SourceManifest, link_dataset, read_table,
                                         source_reject, stand_in_labs, write_source)
from bnp_cxr.rejects import Reject

INDEX = "index.csv"
INDEX_COLUMNS = ("id", "image", "tb")  # required; "mask" is read when present
RELEASE_IMAGE_DIR = "CXR_png"
# <id>.png where the id ends in _0 or _1, the label (CHNCXR_0001_0.png, MCUCXR_0104_1.png).
RELEASE_NAME = re.compile(r"^(?P<id>.+_(?P<tb>[01]))\.png$", re.IGNORECASE)
MANIFEST_COLUMNS = (*BASE_COLUMNS, "lung_mask_path")
FINDING_COLUMNS = ("tb",)


def read_tb_index(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a TB set's index.csv (id, image, tb[, mask]); a clear error when the file or a column is missing."""
    index = Path(dataset_dir) / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: is {dataset_dir} a TB set (index.csv, images/[, masks/]) or "
                                f"its release ({RELEASE_IMAGE_DIR}/)?")
    return read_table(index, INDEX_COLUMNS)


def _index_problem(row: dict[str, str], seen: set[str], root: Path, with_masks: bool) -> tuple[str, str, str] | None:
    """(reason, column, detail) when an index row cannot become a manifest row, else None (masks: if with_masks)."""
    if not row["id"]:
        return "missing_id", "id", "empty id"
    if row["id"] in seen:
        return "duplicate_id", "id", f"id {row['id']!r} is repeated"
    if row["tb"] not in ("0", "1"):
        return "bad_label", "tb", f"tb {row['tb']!r} is not 0 or 1"
    if not row["image"] or not (root / row["image"]).is_file():
        return "missing_image", "image", f"image {row['image']!r} not found"
    if with_masks and row.get("mask") and not (root / row["mask"]).is_file():
        return "missing_mask", "mask", f"mask {row['mask']!r} not found"
    return None


def _manifest_row(image_id: str, image: str, tb: str, mask: str, link_name: str, with_bnp: bool) -> dict[str, str]:
    return {"patient_id": image_id, "image_path": f"{link_name}/{image}", "study_datetime": "",
            **stand_in_labs(int(tb), with_bnp=with_bnp), "lung_mask_path": f"{link_name}/{mask}" if mask else "",
            "tb": tb}


def _index_rows(link: Path, with_masks: bool, with_bnp: bool) -> tuple[list[dict[str, str]], list[Reject]]:
    rows, rejects, seen = [], [], set()
    for line, row in enumerate(read_tb_index(link), start=2):
        problem = _index_problem(row, seen, link, with_masks)
        seen.add(row["id"])
        if problem:
            rejects.append(source_reject(INDEX, line, row["image"], *problem))
            continue
        mask = row.get("mask", "") if with_masks else ""
        rows.append(_manifest_row(row["id"], row["image"], row["tb"], mask, link.name, with_bnp))
    return rows, rejects


def release_image_dir(dataset_dir: str | os.PathLike) -> Path | None:
    """The folder of a release's labelled PNGs: CXR_png/, else the dataset folder itself; None if neither has one."""
    for folder in (Path(dataset_dir) / RELEASE_IMAGE_DIR, Path(dataset_dir)):
        if folder.is_dir() and any(RELEASE_NAME.match(path.name) for path in folder.iterdir() if path.is_file()):
            return folder
    return None


def _release_rows(link: Path, with_bnp: bool) -> tuple[list[dict[str, str]], list[Reject]]:
    folder = release_image_dir(link)
    listing = f"{folder.relative_to(link).as_posix()}/" if folder != link else "./"
    rows, rejects = [], []
    for path in sorted(path for path in folder.iterdir() if path.is_file()):
        image = path.relative_to(link).as_posix()
        named = RELEASE_NAME.match(path.name)
        if named:
            rows.append(_manifest_row(named["id"], image, named["tb"], "", link.name, with_bnp))
        elif path.suffix.lower() == ".png":
            rejects.append(source_reject(listing, None, image, "unknown_label", "file name",
                                         f"{path.name} does not end in _0.png (normal) or _1.png (tuberculosis)"))
        else:
            rejects.append(source_reject(listing, None, image, "not_an_image", "file name",
                                         f"{path.name} is not a PNG radiograph"))
    return rows, rejects


def write_tb_manifest(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, dataset: Dataset, *,
                      link_name: str, with_masks: bool = True, with_bnp: bool = True,
                      split: str | None = None) -> SourceManifest:
    """Write out_dir/manifest.csv and rejects.csv for a TB set (index or release layout) through a symlink.

    Stand-in labels (a pipeline check that training learns from real images, NOT a BNP model). patient_id is
    the image id (one image per patient in both sets), so the records' hashed 80/10/10 patient split applies;
    study_datetime is empty (no labs table to pair). Index rows with an empty or repeated id, a tb other than
    0 / 1, a missing image or a missing mask, and released files without a label in their name or that are not
    PNGs, go to rejects.csv; the rest to the manifest. split: every row in it (common.write_source). Deterministic.
    """
    link = link_dataset(dataset_dir, out_dir, link_name)
    if (link / INDEX).is_file() or release_image_dir(link) is None:  # neither: read_tb_index names both layouts
        rows, rejects = _index_rows(link, with_masks, with_bnp)
    else:
        rows, rejects = _release_rows(link, with_bnp)
    return write_source(out_dir, rows, rejects, MANIFEST_COLUMNS, FINDING_COLUMNS, dataset, split)


def tb_source(dataset: Dataset, link_name: str) -> Callable[..., SourceManifest]:
    """The SOURCES writer of one TB set: write_tb_manifest with its Dataset and link name filled in."""
    def write(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *, link_name: str = link_name,
              with_masks: bool = True, with_bnp: bool = True, split: str | None = None) -> SourceManifest:
        return write_tb_manifest(dataset_dir, out_dir, dataset, link_name=link_name, with_masks=with_masks,
                                 with_bnp=with_bnp, split=split)

    write.__doc__ = f"Write out_dir/manifest.csv and rejects.csv for the {dataset.name} set (nlm_tb.write_tb_manifest)."
    return write
