"""Bones and pulmonary vessels of the phantom: ribs, clavicles, spine and the hilar vascular tree.

Each structure is a density field (bright = attenuating) on a working grid given as fractional row and
column coordinates. Bones are tubes: their projected density follows the chord length of a cortical
shell, which is what makes rib edges brighter than rib centres on a real radiograph.
"""

from __future__ import annotations

import cv2
import numpy as np

from bnp_cxr.phantom.anatomy import SIDES, Anatomy, medial_edge


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (edges may be in either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def tube_profile(d: np.ndarray, half_width: float, cortex: float = 0.6) -> np.ndarray:
    """Projected density across a hollow bone of the given half-width (chord of shell minus marrow)."""
    outer = np.sqrt(np.clip(1.0 - (d / half_width) ** 2, 0.0, None))
    inner = np.sqrt(np.clip(1.0 - (d / (0.72 * half_width)) ** 2, 0.0, None))
    return (outer - cortex * 0.72 * inner) / (1.0 - cortex * 0.72)


def add_band(field: np.ndarray, ys: np.ndarray, centre_y: np.ndarray, weight: np.ndarray,
             half_width: float, amplitude: float) -> None:
    """Add a curved bone band (centre row per column, weight per column) to `field` in place."""
    columns = np.nonzero(weight > 1e-3)[0]
    if columns.size == 0:
        return
    c0, c1 = columns[0], columns[-1] + 1
    top = float(centre_y[c0:c1].min()) - half_width
    bottom = float(centre_y[c0:c1].max()) + half_width
    r0, r1 = np.searchsorted(ys, top), np.searchsorted(ys, bottom)
    if r1 <= r0:
        return
    d = ys[r0:r1, None] - centre_y[None, c0:c1]
    field[r0:r1, c0:c1] += amplitude * weight[None, c0:c1] * tube_profile(d, half_width)


def ribs(ys: np.ndarray, xs: np.ndarray, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs (curved bands off the spine, bending down laterally) and fainter anterior ribs."""
    field = np.zeros((ys.size, xs.size), np.float32)
    spine_x = a.cx + a.spine_shift
    spacing = (a.y_dome_right - a.y_apex + 0.03) / 9.0
    for side in SIDES:
        u = (xs - spine_x) * side / a.thorax_half_width
        for k in range(10):  # posterior ribs 1-10: rise slightly off the spine, then curve down laterally
            y0 = a.y_apex - 0.015 + k * spacing + rng.normal(0.0, 0.003)
            centre = y0 - 0.03 * u + (0.08 + 0.004 * k) * np.clip(u, 0, None) ** 3
            weight = smoothstep(0.05, 0.14, u) * (1.0 - smoothstep(0.98, 1.1, u))
            add_band(field, ys, centre, weight, 0.009 + 0.0005 * k, 0.075)
        for k in range(7):  # anterior ribs: from the lateral wall down towards the sternum, fainter
            y0 = a.y_apex + 0.035 + k * spacing * 1.05 + rng.normal(0.0, 0.003)
            centre = y0 + 0.10 * np.clip(1.0 - u, 0, None) ** 1.2
            weight = smoothstep(0.3, 0.55, u) * (1.0 - smoothstep(0.97, 1.06, u))
            add_band(field, ys, centre, weight, 0.0085, 0.035)
    return field


def clavicles(ys: np.ndarray, xs: np.ndarray, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Clavicles: gently S-shaped bands from the sternal notch up to the shoulders."""
    field = np.zeros((ys.size, xs.size), np.float32)
    for side in SIDES:
        u = (xs - (a.cx + a.spine_shift)) * side / a.thorax_half_width
        y_clavicle = a.y_apex + 0.035 + rng.normal(0.0, 0.004)
        centre = y_clavicle - 0.05 * u + 0.012 * np.sin(2.0 * np.pi * u / 1.3)
        weight = smoothstep(0.05, 0.12, u) * (1.0 - smoothstep(1.15, 1.3, u))
        add_band(field, ys, centre, weight, 0.0095, 0.085)
    return field


def spine(ys: np.ndarray, xs: np.ndarray, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Vertebral column: a bright central band with vertebral bodies, endplates and pedicles."""
    dx = xs - (a.cx + a.spine_shift)
    column = smoothstep(0.048, 0.03, np.abs(dx))
    period = 0.052 + rng.normal(0.0, 0.002)
    phase = ((ys - rng.uniform(0, period)) / period) % 1.0
    disc = np.exp(-(((phase - 0.5) / 0.07) ** 2))  # darker disc spaces between vertebral bodies
    endplate = np.exp(-(((np.abs(phase - 0.5) - 0.1) / 0.03) ** 2))
    body = (0.05 - 0.025 * disc + 0.015 * endplate)[:, None] * column[None, :]
    # Pedicles: paired ovals at each vertebra, seen end-on.
    pedicle_rows = np.exp(-(((phase - 0.15) / 0.12) ** 2))
    pedicle_cols = np.exp(-(((np.abs(dx) - 0.026) / 0.006) ** 2))
    return (body + 0.025 * pedicle_rows[:, None] * pedicle_cols[None, :]).astype(np.float32)


def vessel_tree(ys: np.ndarray, xs: np.ndarray, a: Anatomy, rng: np.random.Generator,
                pixel_mm: float) -> np.ndarray:
    """Pulmonary vessels branching from each hilum, thinning and fading towards the periphery."""
    height, width = ys.size, xs.size
    canvas = np.zeros((height, width), np.float32)
    y_hilum = a.heart_top - 0.02
    for side in SIDES:
        medial = float(medial_edge(np.array([y_hilum], np.float32), a, side)[0])
        # Trunks leave from points spread over the hilum, downward (positive angles) favoured as in
        # upright lungs where basal vessels carry more blood.
        for angle in np.linspace(-75, 85, 9):
            # Upper trunks leave the upper hilum, lower ones the lower: no single bright convergence point.
            start = np.array([(a.cx + side * (medial + rng.uniform(0.0, 0.02))) * width,
                              (y_hilum + 0.07 * angle / 85.0 + rng.normal(0.0, 0.006)) * height])
            _branch(canvas, rng, start, np.deg2rad(angle + rng.normal(0, 8)), side,
                    length_px=0.06 * width * rng.uniform(0.7, 1.3), thickness_px=2.2 / pixel_mm,
                    intensity=1.0, depth=5)
    return cv2.GaussianBlur(canvas, (0, 0), max(0.9 / pixel_mm, 0.5))


def _branch(canvas: np.ndarray, rng: np.random.Generator, start: np.ndarray, angle: float, side: int,
            length_px: float, thickness_px: float, intensity: float, depth: int) -> None:
    # Two slightly bent segments per branch: vessels are gently curved, not ruler-straight.
    bend = angle + rng.normal(0.0, 0.15)
    middle = start + 0.5 * length_px * np.array([side * np.cos(angle), np.sin(angle)])
    end = middle + 0.5 * length_px * np.array([side * np.cos(bend), np.sin(bend)])
    thickness = max(1, int(round(thickness_px)))
    for p0, p1 in ((start, middle), (middle, end)):
        cv2.line(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), float(intensity), thickness,
                 cv2.LINE_8)
    if depth <= 1:
        return
    for sign in (-1, 1):
        spread = np.deg2rad(rng.uniform(12, 35))
        _branch(canvas, rng, end, bend + sign * spread, side, length_px * rng.uniform(0.6, 0.8),
                thickness_px * 0.68, intensity * 0.8, depth - 1)
