"""Patient anatomy of a PA/AP chest radiograph: sampled shape parameters and the binary masks they define.

Coordinates are fractions of the image (x across the width, y down the height), so one anatomy renders
at any size. Side -1 is the image's left (the patient's right lung, PA view), side +1 the image's right,
where the heart mostly sits. Shapes are per-row / per-column profiles combined by broadcasting, which
keeps a 1536 x 1280 mask to a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDES = (-1, 1)
HEART_RIGHT_FRACTION = 0.36  # share of the heart's width right of the midline (patient's right)


@dataclass(frozen=True)
class Anatomy:
    """Shape parameters of one patient's chest in image fractions."""

    cx: float  # thoracic midline
    spine_shift: float  # spine vs thorax offset: what a slightly rotated patient looks like
    thorax_half_width: float  # lateral lung edge at its widest, from the midline
    body_half_width: float
    neck_half_width: float
    shoulder_y: float
    y_apex: float
    y_dome_right: float  # image-left hemidiaphragm dome (patient's right, higher)
    y_dome_left: float
    cp_depth: float  # costophrenic sulcus below the dome
    heart_width: float  # total heart width (fraction of the image width)
    heart_top: float
    aortic_knob: float
    lung_air: float  # how much darker aerated lung is than soft tissue

    def dome(self, side: int) -> float:
        """Dome height of the hemidiaphragm on `side`."""
        return self.y_dome_right if side < 0 else self.y_dome_left

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio: heart width over internal thoracic width."""
        return self.heart_width / (2.0 * self.thorax_half_width)


def sample_anatomy(rng: np.random.Generator, ctr: float, ap_view: bool, aspect: float) -> Anatomy:
    """Draw a patient's chest shape; `ctr` sets the heart width, AP views magnify the heart ~6 %."""
    size = rng.uniform(0.92, 1.06)
    thorax = 0.335 * size * rng.uniform(0.97, 1.03) * min(1.0, 1.2 / aspect)
    y_apex = rng.uniform(0.10, 0.14)
    y_dome_right = y_apex + 0.50 * size * rng.uniform(0.95, 1.05)
    magnification = 1.06 if ap_view else 1.0
    return Anatomy(
        cx=0.5 + rng.normal(0.0, 0.012),
        spine_shift=rng.normal(0.0, 0.007),
        thorax_half_width=thorax,
        body_half_width=thorax + rng.uniform(0.075, 0.15),
        neck_half_width=rng.uniform(0.075, 0.09),
        shoulder_y=rng.uniform(0.05, 0.09),
        y_apex=y_apex,
        y_dome_right=y_dome_right,
        y_dome_left=y_dome_right + rng.uniform(0.02, 0.045),
        cp_depth=rng.uniform(0.075, 0.10),
        heart_width=min(0.95, ctr * magnification) * 2.0 * thorax,
        heart_top=y_apex + rng.uniform(0.27, 0.31),
        aortic_knob=rng.uniform(0.02, 0.035),
        lung_air=rng.uniform(0.27, 0.33),
    )


def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions: ys (height,), xs (width,), float32."""
    return ((np.arange(height, dtype=np.float32) + 0.5) / height,
            (np.arange(width, dtype=np.float32) + 0.5) / width)


def lateral_edge(ys: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    """Distance from the midline to the lateral lung edge per row (0 above the apex)."""
    y_cp = a.dome(side) + a.cp_depth
    t = np.clip((ys - a.y_apex) / (y_cp - a.y_apex), 0.0, 1.0)
    # Rounded apex (sine rise), then a near-vertical chest wall widening slightly to the sulcus.
    return a.thorax_half_width * np.sin(0.5 * np.pi * np.minimum(1.0, t / 0.6)) ** 0.7 * (0.9 + 0.1 * t)


def heart_profile(ys: np.ndarray, a: Anatomy) -> np.ndarray:
    """Total heart width per row: an elliptical top rounding into a broad base on the diaphragm."""
    bottom = heart_bottom(a)
    y_widest = a.heart_top + 0.68 * (bottom - a.heart_top)
    upper = np.sqrt(np.clip(1.0 - ((ys - y_widest) / (y_widest - a.heart_top)) ** 2, 0.0, 1.0))
    lower = 1.0 - 0.12 * np.clip((ys - y_widest) / (bottom - y_widest), 0.0, 1.0) ** 2
    width = np.where(ys < y_widest, upper, lower) * a.heart_width
    return np.where((ys >= a.heart_top) & (ys <= bottom), width, 0.0).astype(np.float32)


def heart_bottom(a: Anatomy) -> float:
    """Lowest row of the cardiac silhouette (it sits on, and hides behind, the left hemidiaphragm)."""
    return a.y_dome_left + 0.02


def heart_extent(ys: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    """How far the heart reaches from the midline towards `side`, per row."""
    share = HEART_RIGHT_FRACTION if side < 0 else 1.0 - HEART_RIGHT_FRACTION
    return heart_profile(ys, a) * share


def mediastinum_extent(ys: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    """Half-width of the upper mediastinum towards `side`, with the aortic knob on the patient's left."""
    base = 0.05 + 0.01 * np.clip((ys - a.y_apex) / 0.3, 0.0, 1.0)
    if side > 0:
        base = base + a.aortic_knob * np.exp(-(((ys - (a.heart_top - 0.07)) / 0.03) ** 2))
    return base


def medial_edge(ys: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    """Distance from the midline to the medial lung edge: mediastinum or heart, whichever is wider.

    Near the apex the medial edge swings laterally, so each apex is a rounded dome over the middle of
    the hemithorax rather than a point beside the trachea.
    """
    apex = 0.45 * a.thorax_half_width * np.clip(1.0 - (ys - a.y_apex) / 0.07, 0.0, 1.0) ** 2
    return np.maximum(mediastinum_extent(ys, a, side) + apex, heart_extent(ys, a, side))


def dome_curve(xs: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    """Hemidiaphragm per column: dome peak at ~45 % of the hemithorax, deep lateral costophrenic sulcus."""
    # Beyond the chest wall (u > 1.1) the curve stays flat: the diaphragm inserts at the sulcus.
    u = np.minimum((xs - a.cx) * side / a.thorax_half_width, 1.1)
    lateral = a.cp_depth * np.clip((u - 0.45) / 0.55, 0.0, None) ** 2
    medial = 0.03 * np.clip((0.45 - u) / 0.45, 0.0, None) ** 2
    return (a.dome(side) + lateral + medial).astype(np.float32)


def lung_mask(ys: np.ndarray, xs: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    """Boolean mask of one lung field."""
    u = ((xs - a.cx) * side)[None, :]
    inside = (u > medial_edge(ys, a, side)[:, None]) & (u < lateral_edge(ys, a, side)[:, None])
    return inside & (ys[:, None] < dome_curve(xs, a, side)[None, :]) & (ys[:, None] > a.y_apex)


def heart_mask(ys: np.ndarray, xs: np.ndarray, a: Anatomy) -> np.ndarray:
    """Boolean mask of the cardiac silhouette."""
    dx = (xs - a.cx)[None, :]
    width = heart_profile(ys, a)[:, None]
    return (dx > -HEART_RIGHT_FRACTION * width) & (dx < (1.0 - HEART_RIGHT_FRACTION) * width) & (width > 0)


def body_half_width(ys: np.ndarray, a: Anatomy) -> np.ndarray:
    """Half-width of the body outline per row: neck, rounded shoulders, trunk."""
    t = np.clip((ys - a.shoulder_y) / 0.13, 0.0, 1.0)
    # Sloping shoulders: quick widening off the neck, rounding into the trunk.
    shoulders = a.neck_half_width + (a.body_half_width + 0.02 - a.neck_half_width) * np.sin(0.5 * np.pi * t) ** 0.8
    return np.where(ys < a.shoulder_y, a.neck_half_width, shoulders - 0.02 * np.clip((ys - 0.3) / 0.7, 0, 1))
