"""Contact sheet: a grid of decoded cohort images with their severity, to check the phantom by eye."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import cv2
import numpy as np

TILE_WIDTH_PX = 256


def _display_pixels(path: Path) -> np.ndarray:
    """Decode with the project reader when present (it is what training sees), else with pydicom."""
    try:
        from bnp_cxr.data.imaging import read_radiograph
    except ImportError:
        from bnp_cxr.phantom.dicomio import read_display

        return read_display(path)
    return read_radiograph(path, allow_lateral=True).pixels


def write_contact_sheet(cohort_dir: str | os.PathLike, out_png: str | os.PathLike, n: int = 16) -> Path:
    """Write a grid of the first n decodable images (display convention, percentile window) to out_png."""
    cohort = Path(cohort_dir)
    with (cohort / "truth.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    tiles = []
    for row in rows:
        if len(tiles) == n:
            break
        try:
            pixels = _display_pixels(cohort / row["image_path"])
        except Exception:  # planted corrupt files are skipped: the sheet shows what decodes
            continue
        low, high = np.percentile(pixels[::4, ::4], (0.5, 99.5))
        unit = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0)
        height = round(unit.shape[0] * TILE_WIDTH_PX / unit.shape[1])
        tile = (cv2.resize(unit, (TILE_WIDTH_PX, height), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)
        label = f"{Path(row['image_path']).stem} s={float(row['severity']):.2f} {row['view']}"
        cv2.putText(tile, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        raise ValueError(f"no decodable image in {cohort}")
    columns = min(len(tiles), 4)
    tile_h = max(tile.shape[0] for tile in tiles)
    sheet = np.zeros((tile_h * math.ceil(len(tiles) / columns), TILE_WIDTH_PX * columns), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * tile_h:r * tile_h + tile.shape[0], c * TILE_WIDTH_PX:(c + 1) * TILE_WIDTH_PX] = tile
    out = Path(out_png)
    cv2.imwrite(str(out), sheet)
    return out
