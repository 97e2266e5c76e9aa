"""Lung masks from a trained U-Net: resize to the model's size and back, threshold, keep the largest parts."""

from __future__ import annotations

import cv2
import keras
import numpy as np


def keep_largest_components(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """The `count` largest 8-connected components of a boolean mask (two lungs; drops stray specks)."""
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n_labels - 1 <= count:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.argsort(areas, kind="stable")[::-1][:count]
    return np.isin(labels, keep)


def predict_lung_masks(model: keras.Model, images: np.ndarray, *, threshold: float = 0.5, batch_size: int = 16,
                       keep_components: int | None = None) -> np.ndarray:
    """Boolean lung masks [N,H,W] for images [N,H,W,1] in [0,1], resized to the model's size and back.

    Probabilities (not masks) are resized back, with linear interpolation, so edges stay sub-pixel.
    keep_components=2 keeps the two largest connected components of each mask.
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    n, height, width = images.shape[:3]
    if n == 0:
        return np.zeros((0, height, width), bool)
    model_size = int(model.input_shape[1])
    same_size = (height, width) == (model_size, model_size)
    resized = images[..., 0]
    if not same_size:
        interpolation = cv2.INTER_AREA if model_size < max(height, width) else cv2.INTER_LINEAR
        resized = np.stack([cv2.resize(image, (model_size, model_size), interpolation=interpolation)
                            for image in resized])
    probability = model.predict(resized[..., None], batch_size=batch_size, verbose=0)[..., 0]
    if not same_size:
        probability = np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probability])
    masks = probability > threshold
    if keep_components:
        masks = np.stack([keep_largest_components(mask, keep_components) for mask in masks])
    return masks
