"""The saliency library's path and perturbation methods for our Keras regressors: IG, Blur IG, Guided IG, Occlusion.

Each runs `saliency.core` with the callback of bnp_cxr.attribution.callbacks; a map is float32 [H, W], the
library's [H, W, 1] output summed over its one channel, signed (positive = raises the explained output):

- ig: IntegratedGradients (Sundararajan et al. 2017) from a black baseline, `MethodConfig.ig_steps` steps,
  `batch_size` steps per model call;
- blur_ig: BlurIG (Xu et al. 2020), the library's defaults (max_sigma 50, 100 steps), batched like IG;
- guided_ig: GuidedIG (Kapishnikov et al. 2021), the library's defaults (200 steps, fraction 0.25,
  max_dist 0.02) from a black baseline. Each step's gradient decides the next point of the path, so its
  200 model calls are sequential by construction. saliency 0.2.1 calls `np.quantile(..., interpolation=)`,
  a keyword numpy 2.4 removed: `numpy_quantile_compat` maps it to `method=` around the library call only;
- occlusion: the library's Occlusion (score drop when a window is set to 0, summed over the windows that
  cover a pixel) slides at stride 1 with one model call per position; `occlusion_map` slides a window of
  `occlusion_geometry(size)` at a stride and evaluates all positions in batched calls. At stride 1 it is
  the library's map (tests/test_attribution_methods.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import saliency.core as saliency
from saliency.core import guided_ig as saliency_guided_ig

from bnp_cxr.attribution.callbacks import ModelGradients

LIBRARY_METHODS = ("ig", "blur_ig", "guided_ig", "occlusion")


class _NumpyWithQuantileInterpolation:
    """numpy, except that `quantile(..., interpolation=X)` runs as `quantile(..., method=X)` (numpy >= 1.22)."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, *args, interpolation: str | None = None, **kwargs):
        if interpolation is not None:
            kwargs.setdefault("method", interpolation)
        return np.quantile(a, q, *args, **kwargs)


@contextmanager
def numpy_quantile_compat() -> Iterator[None]:
    """Within the block, saliency's Guided IG module sees a numpy whose quantile accepts `interpolation=`."""
    original = saliency_guided_ig.np
    saliency_guided_ig.np = _NumpyWithQuantileInterpolation()
    try:
        yield
    finally:
        saliency_guided_ig.np = original


def occlusion_geometry(size: int) -> tuple[int, int]:
    """(window, stride) in px for an image of `size` px: 1/8 of the side, half-overlapping (15 x 15 positions)."""
    window = max(2, size // 8)
    return window, max(1, window // 2)


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis at `stride`, the last one flush with the edge so every pixel is covered."""
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def occlusion_map(gradients: ModelGradients, image: np.ndarray, window: int, stride: int = 1, *, value: float = 0.0,
                  batch_size: int = 64) -> np.ndarray:
    """Occlusion of one image [H, W, C]: output drop per window position, summed over covering windows, [H, W]."""
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape[:2]
    if not 1 <= window <= min(height, width) or stride < 1:
        raise ValueError(f"occlusion needs 1 <= window <= {min(height, width)} and stride >= 1, got {window}, {stride}")
    positions = [(row, col) for row in _starts(height, window, stride) for col in _starts(width, window, stride)]
    keys = [saliency.OUTPUT_LAYER_VALUES]
    original = gradients.call_model_function(image[None], expected_keys=keys)[saliency.OUTPUT_LAYER_VALUES][0]
    scores = np.zeros((height, width), dtype=np.float32)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for i, (row, col) in enumerate(chunk):
            batch[i, row:row + window, col:col + window] = value
        outputs = gradients.call_model_function(batch, expected_keys=keys)[saliency.OUTPUT_LAYER_VALUES]
        for (row, col), output in zip(chunk, outputs):
            scores[row:row + window, col:col + window] += original - output
    return scores


def library_map(method: str, image: np.ndarray, gradients: ModelGradients, *, ig_steps: int = 100,
                batch_size: int = 32, occlusion: tuple[int, int] | None = None) -> np.ndarray:
    """One image's [H, W] map of a LIBRARY_METHODS method (module docstring); occlusion = (window, stride)."""
    callback = gradients.call_model_function
    black = np.zeros_like(image)
    if method == "ig":
        mask = saliency.IntegratedGradients().GetMask(image, callback, x_baseline=black, x_steps=ig_steps,
                                                      batch_size=batch_size)
    elif method == "blur_ig":
        mask = saliency.BlurIG().GetMask(image, callback, batch_size=batch_size)
    elif method == "guided_ig":
        with numpy_quantile_compat():
            mask = saliency.GuidedIG().GetMask(image, callback, x_baseline=black)
    elif method == "occlusion":
        window, stride = occlusion or occlusion_geometry(image.shape[0])
        return occlusion_map(gradients, image, window, stride, batch_size=max(batch_size, 1))
    else:
        raise ValueError(f"unknown library method {method!r}; choose one of {LIBRARY_METHODS}")
    return np.asarray(mask, dtype=np.float32).sum(axis=-1)


def library_maps(method: str, images: np.ndarray, gradients: ModelGradients, *, ig_steps: int = 100,
                 batch_size: int = 32, occlusion: tuple[int, int] | None = None) -> np.ndarray:
    """Maps float32 [N, H, W] of a LIBRARY_METHODS method for images [N, H, W, 1]."""
    return np.stack([library_map(method, image, gradients, ig_steps=ig_steps, batch_size=batch_size,
                                 occlusion=occlusion) for image in images]).astype(np.float32)


AUTO_IG_STEPS = (8, 16, 32, 64, 100, 200, 400)  # candidates of --ig-steps auto, fewest first
AUTO_IG_TOLERANCE = 0.01


def completeness_gap(gradients: ModelGradients, image: np.ndarray, steps: int, *, batch_size: int = 32) -> float:
    """|sum of IG - (f(x) - f(black))| / |f(x) - f(black)| of the library's IG from black with `steps` steps."""
    black = np.zeros_like(image)
    attribution = saliency.IntegratedGradients().GetMask(image, gradients.call_model_function, x_baseline=black,
                                                         x_steps=steps, batch_size=batch_size)
    outputs = gradients.call_model_function(np.stack([image, black]), expected_keys=[saliency.OUTPUT_LAYER_VALUES])
    change = float(outputs[saliency.OUTPUT_LAYER_VALUES][0] - outputs[saliency.OUTPUT_LAYER_VALUES][1])
    if change == 0:
        return 0.0 if float(np.sum(attribution)) == 0 else float("inf")
    return abs(float(np.sum(attribution, dtype=np.float64)) - change) / abs(change)


def auto_ig_steps(gradients: ModelGradients, images: np.ndarray, *, candidates: tuple[int, ...] = AUTO_IG_STEPS,
                  tolerance: float = AUTO_IG_TOLERANCE, batch_size: int = 32) -> tuple[int, float]:
    """(fewest candidate steps whose completeness gap is below `tolerance` on every image, that gap); the most
    steps and their gap when none is."""
    gap = float("inf")
    for steps in sorted(candidates):
        gap = max(completeness_gap(gradients, image, steps, batch_size=batch_size) for image in images)
        if gap < tolerance:
            return steps, gap
    return max(candidates), gap
