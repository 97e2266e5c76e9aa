"""Per-image intensity standardisation of model inputs inside the content box: one implementation for records
read by tf.data (bnp_cxr.records.reader) and for new radiographs (bnp_cxr.predict).

"clahe" is contrast-limited adaptive histogram equalisation (Zuiderveld, Graphics Gems IV, 1994; OpenCV's
8-bit implementation, clip limit 2, 8 x 8 tiles), a common way to even out exposure and processing
differences between sites in chest radiograph models. It runs on the content box only: the letterbox
padding would otherwise become tiles of its own and be brightened.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

STANDARDIZATIONS = ("none", "clahe")
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)


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
    levels = np.round(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)
    equalised = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES).apply(levels)
    out[top:bottom, left:right] = (equalised.astype(np.float32) / 255.0).reshape(out[top:bottom, left:right].shape)
    return out
