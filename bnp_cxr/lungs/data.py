"""Lung training pairs: image/mask folders (index.csv) or manifests, read in the records' geometry.

Images go through the records' geometry (bnp_cxr.records.prepare: full-resolution intensity window,
INTER_AREA letterbox padded with air, window applied after resizing; masks set where at least half
of a pixel's source area was set), so a model trained here fits record images of the same size.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from bnp_cxr.data import imaging
from bnp_cxr.records.prepare import MaskError, MaskStack, letterbox, letterbox_geometry, read_mask
from bnp_cxr.rejects import Reject
from bnp_cxr.workspace import LATERAL_VIEWS

PathLike = str | os.PathLike
MANIFEST_MASK_COLUMN = "lung_mask_path"


class LungDataError(ValueError):
    """A mask folder, index or manifest that cannot be used as training pairs."""


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LungDataError(f"cannot read {path}: {error}") from error


def _row_problem(root: Path, row: dict, image_column: str, mask_column: str, seen: set[str]) -> tuple[str, str]:
    """(reason, detail) when a CSV row cannot be a training pair, else ("", "")."""
    if row.get("view", "").strip().upper() in LATERAL_VIEWS:
        return "lateral_view", f"view {row['view'].strip()!r}: lung masks are for frontal radiographs"
    for column in (image_column, mask_column):
        text = (row.get(column) or "").strip()
        if not text:
            return "missing_path", f"{column} is empty"
        if not (root / text).is_file():
            return "file_not_found", f"{column} {str(root / text)!r} not found"
    if str(root / row[image_column].strip()) in seen:
        return "duplicate_row", f"{image_column} {row[image_column].strip()!r} is listed twice"
    return "", ""


def read_mask_folder(folder: PathLike, *, index: str = "index.csv",
                     rejects: list[Reject] | None = None) -> list[tuple[str, str]]:
    """(image_path, mask_path) pairs from folder/index (columns image, mask) or a manifest CSV (lung_mask_path).

    Paths are relative to the CSV's folder. Manifest rows without a lung_mask_path are not pairs. Rows
    naming missing files, lateral views (a `view` column) or an image already listed are problems: each
    is appended to `rejects` and the rest go on, or, without a list, they raise one LungDataError naming
    the CSV line (header = line 1) and file of each.
    """
    folder = Path(folder)
    csv_path = folder if folder.is_file() else folder / index
    if not csv_path.is_file():
        raise LungDataError(f"no index at {csv_path}: expected a CSV with image and mask columns, "
                            f"or a manifest CSV with image_path and {MANIFEST_MASK_COLUMN}")
    columns, rows = _read_csv(csv_path)
    if MANIFEST_MASK_COLUMN in columns and "image_path" in columns:
        image_column, mask_column = "image_path", MANIFEST_MASK_COLUMN
    elif "image" in columns and "mask" in columns:
        image_column, mask_column = "image", "mask"
    else:
        raise LungDataError(f"{csv_path} has columns {columns}: need image and mask, "
                            f"or image_path and {MANIFEST_MASK_COLUMN}")
    root, pairs, problems, seen = csv_path.parent, [], [], set()
    for line, row in enumerate(rows, start=2):
        if mask_column == MANIFEST_MASK_COLUMN and not (row.get(mask_column) or "").strip():
            continue
        reason, detail = _row_problem(root, row, image_column, mask_column, seen)
        image, mask = (str(root / (row.get(column) or "").strip()) for column in (image_column, mask_column))
        if reason:
            problems.append(Reject(source=csv_path.name, row=line, image_path=image, mask_path=mask, reason=reason,
                                   detail=f"{csv_path.name} line {line}: {detail}"))
        else:
            seen.add(image)
            pairs.append((image, mask))
    if problems and rejects is None:
        shown = "\n  ".join(f"{p.reason}: {p.detail}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise LungDataError(f"{len(problems)} row(s) of {csv_path} cannot be used:\n  {shown}{more}")
    if rejects is not None:
        rejects.extend(problems)
    if not pairs:
        raise LungDataError(f"{csv_path} lists no usable image/mask pairs")
    return pairs


def prepare_pair(image_path: str, mask_path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32 [size,size] in [0,1]) and mask (bool) in the records' letterbox geometry."""
    pixels = imaging.read_radiograph(image_path).pixels
    lung = read_mask(mask_path, pixels.shape, binary=True, column="mask")
    geometry = letterbox_geometry(*pixels.shape, size)
    # As bnp_cxr.records.prepare.prepare_row: window on the full image, pad with its low end, window after resizing.
    window = imaging.intensity_window(pixels)
    image = imaging.apply_window(letterbox(pixels, geometry, fill=window[0]), window)
    mask, _ = MaskStack(lung, None).at(geometry)
    return image, mask.astype(bool)


def load_pairs(pairs: list[tuple[str, str]], size: int, *,
               rejects: list[Reject] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N,size,size,1] in [0,1], masks bool [N,size,size]); unreadable pairs are skipped.

    Each skipped pair is appended to `rejects` (or warned about when no list is given).
    """
    images, masks = [], []
    for image_path, mask_path in pairs:
        try:
            image, mask = prepare_pair(image_path, mask_path, size)
        except (imaging.RadiographError, MaskError) as error:
            reject = Reject(image_path=image_path, mask_path=mask_path, reason=error.reason,
                            column=getattr(error, "column", ""), detail=error.detail)
            if rejects is None:
                warnings.warn(f"skipped {image_path}: {reject.reason}: {reject.detail}", stacklevel=2)
            else:
                rejects.append(reject)
            continue
        images.append(image)
        masks.append(mask)
    if not images:
        raise LungDataError(f"none of the {len(pairs)} image/mask pairs could be read")
    return np.stack(images)[..., None].astype(np.float32), np.stack(masks)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices from a seeded permutation; at least one image on each side."""
    if n < 2 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"need >= 2 images and 0 < val_fraction < 1, got {n} and {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
