"""Findings of cardiogenic pulmonary oedema at three spatial scales, each driven by a strength in [0, 1].

- lung opacity: coarse perihilar ("bat-wing") and basal airspace opacity, visible at 64 px;
- Kerley B lines: 1-2 cm horizontal septal lines at the lower lateral lung periphery. Their cross profile
  is the 4th derivative of a Gaussian (bright core, dark flanks, zero mean), integrated analytically over
  each pixel, so area-averaging to 256 px or less cancels them while 512 px keeps most of their energy;
- pleural effusion: basal fluid with a meniscus, blunting the costophrenic angle.
Cardiac enlargement lives in the anatomy (heart width), the confounders in devices.py.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bnp_cxr.phantom.anatomy import Anatomy, medial_edge

KERLEY_SUPPORT_SIGMAS = 4.5  # the profile is negligible (< 1e-3 of its peak) beyond this


def opacity_shape(ys: np.ndarray, xs: np.ndarray, a: Anatomy) -> np.ndarray:
    """Unit-peak spatial pattern of oedema opacity: perihilar wings plus a basal gradient."""
    y_hilum = a.heart_top - 0.01
    rows_hilum = np.exp(-0.5 * ((ys - y_hilum) / 0.12) ** 2)
    wings = np.zeros((ys.size, xs.size), np.float32)
    for side in (-1, 1):
        x_hilum = a.cx + side * (float(medial_edge(np.array([y_hilum]), a, side)[0]) + 0.02)
        cols = np.exp(-0.5 * ((xs - x_hilum) / 0.10) ** 2)
        wings = np.maximum(wings, rows_hilum[:, None] * cols[None, :])
    basal = np.clip((ys - (a.y_dome_right - 0.14)) / 0.12, 0.0, 1.0) ** 1.5
    return np.maximum(wings, 0.75 * basal[:, None]).astype(np.float32)


def mottle(shape: tuple[int, int], rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """Low-frequency random field in [0, 1]: the patchy texture of airspace filling."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma_px)
    field /= max(float(np.abs(field).max()), 1e-6)
    return 0.5 + 0.5 * field


def effusion_mask(ys: np.ndarray, xs: np.ndarray, a: Anatomy, lungs: dict[int, np.ndarray],
                  heights: dict[int, float]) -> np.ndarray:
    """Boolean fluid region: lung base below a meniscus that rises towards the chest wall."""
    fluid = np.zeros((ys.size, xs.size), bool)
    for side, height in heights.items():
        if height <= 0:
            continue
        u = np.clip((xs - a.cx) * side / a.thorax_half_width, 0.0, 1.0)
        top = a.dome(side) + a.cp_depth - height * (0.45 + 0.75 * u ** 2)
        fluid |= lungs[side] & (ys[:, None] > top[None, :])
    return fluid


def effusion_heights(strength: float) -> dict[int, float]:
    """Fluid height (fraction of image height) per side: right first, bilateral when larger."""
    if strength <= 0:
        return {}
    return {-1: 0.03 + 0.12 * strength, 1: 0.10 * strength if strength > 0.35 else 0.0}


def kerley_profile(offset_px: np.ndarray, sigma_px: float) -> np.ndarray:
    """Pixel-averaged 4th-derivative-of-Gaussian cross profile with unit peak (zero integral).

    p(u) = (u^4 - 6u^2 + 3) exp(-u^2/2) / 3 with u = d/sigma; its antiderivative is
    F(d) = -(sigma/3)(u^3 - 3u) exp(-u^2/2), so the mean over a pixel [d-1/2, d+1/2] is exact.
    """
    def antiderivative(d: np.ndarray) -> np.ndarray:
        u = d / sigma_px
        return -(sigma_px / 3.0) * (u ** 3 - 3.0 * u) * np.exp(-0.5 * u * u)
    return (antiderivative(offset_px + 0.5) - antiderivative(offset_px - 0.5)).astype(np.float32)


def kerley_lines(lungs: dict[int, np.ndarray], blocked: np.ndarray, a: Anatomy, strength: float,
                 rng: np.random.Generator, pixel_mm: float, sigma_mm: float,
                 amplitude: float) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Kerley B lines: additive field, bright-core mask and per-line truth (rows/cols in px).

    Lines are horizontal, touch the lateral pleura and run 10-20 mm medially; each one is placed only
    where its whole cross profile lies inside the lung and outside `blocked` (e.g. effusion), so the
    mask never truncates the zero-mean profile.
    """
    height, width = blocked.shape
    field = np.zeros((height, width), np.float32)
    core = np.zeros((height, width), bool)
    lines: list[dict] = []
    if strength <= 0:
        return field, core, lines
    sigma_px = sigma_mm / pixel_mm
    half = int(math.ceil(KERLEY_SUPPORT_SIGMAS * sigma_px)) + 1
    for side, lung in lungs.items():
        allowed = lung & ~blocked
        n_lines = int(round(2 + 10 * strength))
        for _ in range(n_lines * 6):  # bounded retries for placements that leave the lung
            if sum(line["side"] == side for line in lines) >= n_lines:
                break
            y_frac = rng.uniform(a.dome(side) - 0.15, a.dome(side) + 0.3 * a.cp_depth)
            row_c = y_frac * height
            r0, r1 = int(math.floor(row_c)) - half, int(math.floor(row_c)) + half + 1
            if r0 < 0 or r1 > height:
                continue
            inside_cols = np.nonzero(allowed[r0:r1].all(axis=0))[0]
            if inside_cols.size == 0:
                continue
            # The line starts at the lateral pleura: the outermost column with the full profile inside.
            edge = inside_cols[-1] if side > 0 else inside_cols[0]
            length_px = int(rng.uniform(10.0, 20.0) / pixel_mm)
            c0, c1 = (edge - length_px + 1, edge + 1) if side > 0 else (edge, edge + length_px)
            c0, c1 = max(c0, 0), min(c1, width)
            if c1 - c0 < max(3, int(8.0 / pixel_mm)) or not allowed[r0:r1, c0:c1].all():
                continue
            along = np.linspace(0.0, 1.0, c1 - c0, dtype=np.float32)
            pleural_end = along if side > 0 else along[::-1]
            taper = np.clip(pleural_end / 0.35, 0.0, 1.0) ** 0.7  # fades medially, full at the pleura
            offsets = np.arange(r0, r1, dtype=np.float32) + 0.5 - row_c
            cross = kerley_profile(offsets, sigma_px)
            field[r0:r1, c0:c1] += amplitude * cross[:, None] * taper[None, :]
            core[r0:r1, c0:c1] |= (np.abs(offsets) <= 0.742 * sigma_px)[:, None] & (taper > 0.2)[None, :]
            lines.append({"side": side, "row": row_c, "col0": c0, "col1": c1})
    return field, core, lines


def measured_ctr(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Cardiothoracic ratio measured on masks: widest heart row over the widest lung-to-lung span."""
    heart_cols = np.nonzero(heart.any(axis=0))[0]
    lung_cols = np.nonzero(lungs.any(axis=0))[0]
    if heart_cols.size == 0 or lung_cols.size == 0:
        return math.nan
    heart_width = int(heart.sum(axis=1).max())
    return heart_width / float(lung_cols[-1] - lung_cols[0] + 1)

