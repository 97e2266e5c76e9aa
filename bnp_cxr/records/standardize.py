"""Per-image intensity standardisation of model inputs inside the content box: one implementation for records
read by tf.data (bnp_cxr.records.reader) and for new radiographs (bnp_cxr.predict).

"clahe" is contrast-limited adaptive histogram equalisation (Zuiderveld, Graphics Gems IV, 1994; OpenCV's
8-bit implementation, clip limit 2, 8 x 8 tiles, at a 512 px working resolution), a common way to even out
exposure and processing differences between sites in chest radiograph models. It runs on the content box
only: the letterbox padding would otherwise become tiles of its own and be brightened.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

STANDARDIZATIONS = ("none", "clahe")
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)
CLAHE_WORK_PX = 512  # long side at which CLAHE runs (the NIH and Shenzhen sets' native size)


def check_standardization(method: str) -> str:
    """The method name, or a ValueError naming the choices."""
    if method not in STANDARDIZATIONS:
        raise ValueError(f"standardize must be one of {STANDARDIZATIONS}, got {method!r}")
    return method


def run_standardization(run_config: Mapping) -> str:
    """The standardisation a run's model expects (its config.json's "standardize"; runs without one: "none")."""
    return check_standardization(run_config.get("standardize") or "none")


def standardize_image(image: np.ndarray, content_box: Sequence[int], method: str) -> np.ndarray:
    """float32 image in [0, 1] ([H, W] or [H, W, 1]) standardised inside content_box (top, left, bottom, right)."""
    check_standardization(method)
    image = np.asarray(image, dtype=np.float32)
    if method == "none":
        return image
    top, left, bottom, right = (int(value) for value in content_box)
    if bottom <= top or right <= left:  # records without a content box: the whole image
        top, left, bottom, right = 0, 0, image.shape[0], image.shape[1]
    out = image.copy()
    crop = image[top:bottom, left:right].reshape(bottom - top, right - left)
    out[top:bottom, left:right] = clahe(crop).reshape(out[top:bottom, left:right].shape)
    return out


def clahe(image: np.ndarray) -> np.ndarray:
    """CLAHE of a float [H, W] image in [0, 1] at a fixed working resolution (CLAHE_WORK_PX long side).

    The tiles' histograms then hold the same number of pixels whatever the record size, so 64 and 1024 px
    records are equalised alike (at 128 px an 8 x 8 grid would leave 256 pixels per tile for 256 levels, and the
    clip limit would flatten each tile's mapping into a near-linear stretch).
    """
    height, width = image.shape
    scale = CLAHE_WORK_PX / max(height, width)
    work = (max(1, round(width * scale)), max(1, round(height * scale)))
    up = cv2.resize(image, work, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    levels = np.round(np.clip(up, 0.0, 1.0) * 255.0).astype(np.uint8)
    equalised = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES).apply(levels)
    back = cv2.resize(equalised.astype(np.float32) / 255.0, (width, height),
                      interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    return np.clip(back, 0.0, 1.0)
