"""Non-anatomic confounders outside the lungs: ECG electrodes with leads, and a burned-in portable marker.

Sicker patients are more often monitored and imaged AP at the bedside, so these signals correlate with
severity without being caused by oedema: a model can learn them as shortcuts. They are drawn only
outside a safety margin around the lungs, and the final layer is zeroed inside the lung mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from bnp_cxr.phantom.anatomy import Anatomy, body_half_width

ELECTRODE_DENSITY, LEAD_DENSITY, MARKER_DENSITY = 0.9, 0.35, 1.1


def _disk_kernel(radius_px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def _near(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """mask dilated by a disk of radius_px: the same pixels as a dilation of the whole image, computed only
    on the mask's bounding box plus the radius (nothing farther can be near), a third of the work."""
    near = np.zeros(mask.shape, bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return near
    top, left = max(rows[0] - radius_px, 0), max(cols[0] - radius_px, 0)
    bottom, right = rows[-1] + radius_px + 1, cols[-1] + radius_px + 1
    box = mask[top:bottom, left:right].astype(np.uint8)
    near[top:bottom, left:right] = cv2.dilate(box, _disk_kernel(radius_px)) > 0
    return near


def electrode_sites(rng: np.random.Generator, allowed: np.ndarray, count: int,
                    min_gap_px: float) -> list[tuple[int, int]]:
    """Pick up to `count` (row, col) sites from the allowed mask, at least `min_gap_px` apart."""
    rows, cols = np.nonzero(allowed)
    sites: list[tuple[int, int]] = []
    if rows.size == 0:
        return sites
    for index in rng.permutation(rows.size)[: count * 50]:
        site = (int(rows[index]), int(cols[index]))
        if all((site[0] - r) ** 2 + (site[1] - c) ** 2 >= min_gap_px ** 2 for r, c in sites):
            sites.append(site)
        if len(sites) == count:
            break
    return sites


def confounders(lungs: np.ndarray, a: Anatomy, rng: np.random.Generator, pixel_mm: float, electrodes: bool,
                portable_marker: bool) -> tuple[np.ndarray, list[dict]]:
    """Density layer of electrodes, leads and text marker (zero inside the lungs) and their truth."""
    height, width = lungs.shape
    layer = np.zeros((height, width), np.float32)
    items: list[dict] = []
    margin_px = max(1, int(round(12.0 / pixel_mm)))
    if electrodes:  # the margin only constrains where electrodes and their leads go
        _draw_electrodes(layer, items, _near(lungs, margin_px), a, rng, pixel_mm)
    if portable_marker:
        _draw_marker(layer, items, rng, pixel_mm)
    layer[lungs] = 0.0  # guarantee: nothing inside the lungs, whatever was drawn
    return layer, items


def _draw_electrodes(layer: np.ndarray, items: list[dict], near_lung: np.ndarray, a: Anatomy,
                     rng: np.random.Generator, pixel_mm: float) -> None:
    height, width = layer.shape
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    inside_body = np.abs(xs[None, :] - a.cx) < (body_half_width(ys, a)[:, None] - 0.02)
    upper = ys < a.y_apex + 0.06
    lower = ys > max(a.y_dome_right, a.y_dome_left) + a.cp_depth + 0.04
    border = int(round(15.0 / pixel_mm))
    allowed = inside_body & (upper | lower)[:, None] & ~near_lung
    allowed[:border], allowed[-border:], allowed[:, :border], allowed[:, -border:] = False, False, False, False
    # Coarse candidate grid: sampling every pixel would be wasted work for a handful of sites.
    step = max(1, int(round(6.0 / pixel_mm)))
    coarse = np.zeros_like(allowed)
    coarse[::step, ::step] = allowed[::step, ::step]
    sites = electrode_sites(rng, coarse, int(rng.integers(3, 6)), 40.0 / pixel_mm)
    snap = np.zeros((height, width), np.uint8)
    pads = np.zeros((height, width), np.uint8)
    wires = np.zeros((height, width), np.uint8)
    pad_r, snap_r = max(2, int(round(11.0 / pixel_mm))), max(1, int(round(2.5 / pixel_mm)))
    wire_px = max(1, int(round(1.2 / pixel_mm)))
    for row, col in sites:
        cv2.circle(pads, (col, row), pad_r, 255, max(1, int(round(1.0 / pixel_mm))), cv2.LINE_AA)
        cv2.circle(snap, (col, row), snap_r, 255, -1, cv2.LINE_AA)
        # Leads leave towards the nearer vertical end of the image, away from the lungs.
        goes_up = row < height * a.y_apex + 0.06 * height
        end_row = -5 if goes_up else height + 5
        n_points = 12
        t = np.linspace(0.0, 1.0, n_points)
        drift = (rng.uniform(-0.12, 0.12) * width * t
                 + rng.normal(0, 4.0 / pixel_mm) * np.sin(np.pi * t * rng.uniform(1, 3)))
        lateral = np.sign(col - a.cx * width) or 1.0
        path_cols = col + lateral * np.abs(drift)
        path_rows = row + (end_row - row) * t
        points = np.stack([path_cols, path_rows], axis=1).round().astype(np.int32)
        cv2.polylines(wires, [points], False, 255, wire_px, cv2.LINE_AA)
        items.append({"kind": "ecg_electrode", "row": row, "col": col})
    layer += (ELECTRODE_DENSITY * snap.astype(np.float32) + 0.12 * pads + LEAD_DENSITY * wires) / 255.0
    layer[near_lung] = 0.0


def _draw_marker(layer: np.ndarray, items: list[dict], rng: np.random.Generator, pixel_mm: float) -> None:
    height, width = layer.shape
    text = "AP PORTABLE"
    scale = 9.0 / pixel_mm / 22.0  # HERSHEY_SIMPLEX glyphs are ~22 px tall at scale 1: aim for 9 mm letters
    thickness = max(1, int(round(1.2 / pixel_mm)))
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    right = rng.random() < 0.5
    col = width - text_w - int(0.03 * width) if right else int(0.03 * width)
    row = int(0.025 * height) + text_h
    canvas = np.zeros((height, width), np.uint8)
    cv2.putText(canvas, text, (col, row), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    layer += MARKER_DENSITY * canvas.astype(np.float32) / 255.0
    items.append({"kind": "portable_marker", "row": row - text_h // 2, "col": col + text_w // 2})
