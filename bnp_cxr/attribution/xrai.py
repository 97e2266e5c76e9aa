"""XRAI attribution maps: `saliency.core.XRAI` (greedy 'full' algorithm, default parameters), fast or as the library.

Kapishnikov et al., "XRAI: Better Attributions Through Regions", ICCV 2019 (arXiv 1906.02825); PAIR
`saliency` 0.2.1. XRAI ranks image regions by the density of an integrated-gradients attribution
(Sundararajan et al. 2017, arXiv 1703.01365; 100 steps from a black and from a white baseline, averaged).

impl="fast" gives the library's maps from cheaper work: segments computed once per image and size and
cached (bnp_cxr.attribution.xrai_segments, bit-identical to the library's), both baselines' integration
steps in large batches of one compiled tf.function, and an incremental greedy ranking with bit-identical
output. impl="reference" runs `XRAI().GetMaskWithDetails` itself. Given the same base attribution the two
agree exactly; the integrated gradients differ only by float32 summation and batching order (the
interpolated inputs are the library's bits), about 1e-7 relative on CPU.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import saliency.core as saliency
import tensorflow as tf
from saliency.core import xrai as saliency_xrai

from bnp_cxr.attribution.callbacks import ModelGradients
from bnp_cxr.attribution.xrai_segments import (Segments, clear_segment_cache, compute_segments, rank_regions,
                                               xrai_segments)

__all__ = ["IMPLEMENTATIONS", "Segments", "XraiResult", "clear_segment_cache", "integrated_gradients",
           "rank_regions", "xrai_map", "xrai_segments"]

IMPLEMENTATIONS = ("fast", "reference")


@dataclass(eq=False)
class XraiResult:
    """One XRAI map with its region ranking, base attribution and per-stage seconds."""

    attribution: np.ndarray  # [H, W] float32: each pixel holds its region's gain (attribution density)
    ranks: np.ndarray  # [H, W] int64: region rank, 1 = most important (the library's flattened segments)
    base_attribution: np.ndarray  # [H, W, C] float32: integrated gradients averaged over both baselines
    timings: dict[str, float] = field(default_factory=dict)  # segmentation_s, ig_s, ranking_s, total_s

    def ranked_masks(self) -> list[np.ndarray]:
        """Regions as bool masks, most important first (the library's unflattened segments)."""
        return [self.ranks == rank for rank in range(1, int(self.ranks.max()) + 1)]


def default_baselines(image: np.ndarray) -> list[np.ndarray]:
    """XRAI's default baselines: the image's min (black) and max (white) everywhere (saliency `_make_baselines`)."""
    return [np.min(image) * np.ones_like(image), np.max(image) * np.ones_like(image)]


_SWEEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sweep_function(gradients: ModelGradients) -> Callable:
    """Compiled: summed input gradients per baseline over a batch of (baseline, alpha) integration steps."""
    sweep = _SWEEPS.get(gradients)
    if sweep is None:
        owner = weakref.ref(gradients)  # the cache must not keep the model alive

        @tf.function(reduce_retracing=True)
        def sweep(baselines, differences, which, alphas):
            # float64 like the library (a float64 alpha times a float32 difference, plus the baseline),
            # then float32 as its callback casts: the model sees the library's inputs bit for bit.
            base = tf.cast(tf.gather(baselines, which), tf.float64)
            steps = base + alphas[:, None, None, None] * tf.cast(tf.gather(differences, which), tf.float64)
            grads, _ = owner().input_gradients(tf.cast(steps, tf.float32))
            return tf.math.unsorted_segment_sum(grads, which, tf.shape(baselines)[0])

        _SWEEPS[gradients] = sweep
    return sweep


def integrated_gradients_many(gradients: ModelGradients, image: np.ndarray, baselines: Sequence[np.ndarray],
                              steps: int = 100, batch_size: int = 32) -> list[np.ndarray]:
    """Integrated gradients of `image` [H, W, C] from each baseline, all steps batched across baselines."""
    image = np.asarray(image, dtype=np.float32)
    baselines = np.stack([np.asarray(baseline, dtype=np.float32) for baseline in baselines])
    if baselines.shape[1:] != image.shape:
        raise ValueError(f"baselines are {baselines.shape[1:]}, image is {image.shape}")
    differences = image[None] - baselines  # float32, as the library's x_diff
    alphas = np.linspace(0, 1, steps)
    sweep = _sweep_function(gradients)
    baselines_tf, differences_tf = tf.constant(baselines), tf.constant(differences)
    totals = np.zeros(baselines.shape, dtype=np.float32)
    # Batches follow the library's (batch_size steps of one baseline each): the model's float32 results
    # can depend on a batch's make-up, and this way equal batch sizes give the library's sums exactly.
    for baseline in range(len(baselines)):
        for start in range(0, steps, batch_size):
            chunk = alphas[start:start + batch_size]
            which = tf.fill([len(chunk)], tf.constant(baseline, dtype=tf.int32))
            totals += sweep(baselines_tf, differences_tf, which, tf.constant(chunk)).numpy()
    return [total * difference / steps for total, difference in zip(totals, differences)]


def integrated_gradients(gradients: ModelGradients, image: np.ndarray, baseline: np.ndarray, steps: int = 100,
                         batch_size: int = 32) -> np.ndarray:
    """saliency `IntegratedGradients.GetMask(image, ..., x_baseline, x_steps=steps)`, batched and compiled."""
    return integrated_gradients_many(gradients, image, [baseline], steps, batch_size)[0]


def xrai_map(model: keras.Model | None, image: np.ndarray, *, target: str = "bnpp", impl: str = "fast",
             batch_size: int = 32, steps: int = 100, gradients: ModelGradients | None = None,
             segments: Segments | Sequence[np.ndarray] | None = None) -> XraiResult:
    """XRAI of `target` for one image [H, W, 1] in [0, 1]; impl "fast" (ours) or "reference" (the library's call)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
    if gradients is None:
        gradients = ModelGradients(model, target)
    elif gradients.target != target:
        raise ValueError(f"gradients explain {gradients.target!r}, not {target!r}")
    if impl == "reference":
        return _reference(gradients, image, batch_size, steps, segments)
    if impl != "fast":
        raise ValueError(f"unknown XRAI implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    started = time.perf_counter()
    if segments is None:
        segments = compute_segments(image)
    elif not isinstance(segments, Segments):
        segments = Segments.from_masks(segments)
    segmented = time.perf_counter()
    attributions = integrated_gradients_many(gradients, image, default_baselines(image), steps, batch_size)
    base_attribution = np.mean(attributions, axis=0)  # the library's merge of both baselines
    integrated = time.perf_counter()
    attribution, ranks = rank_regions(base_attribution, segments)
    ranked = time.perf_counter()
    return XraiResult(attribution.astype(np.float32), ranks, base_attribution, {
        "segmentation_s": segmented - started, "ig_s": integrated - segmented, "ranking_s": ranked - integrated,
        "total_s": ranked - started})


@contextmanager
def _library_stage_clock(marks: dict[str, float]) -> Iterator[None]:
    """Note when the library's own segmentation call starts and ends (the function itself runs unchanged)."""
    original = saliency_xrai._get_segments_felzenszwalb

    def timed(*args, **kwargs):
        marks["segmentation_start"] = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            marks["segmentation_end"] = time.perf_counter()

    saliency_xrai._get_segments_felzenszwalb = timed
    try:
        yield
    finally:
        saliency_xrai._get_segments_felzenszwalb = original


def _reference(gradients: ModelGradients, image: np.ndarray, batch_size: int, steps: int,
               segments: Segments | Sequence[np.ndarray] | None) -> XraiResult:
    """`saliency.core.XRAI().GetMaskWithDetails` with XRAIParameters(steps=steps), timed per stage."""
    marks: dict[str, float] = {}

    def call_model_function(x_batch, call_model_args=None, expected_keys=None):
        output = gradients.call_model_function(x_batch, call_model_args, expected_keys)
        marks["ig_end"] = time.perf_counter()
        return output

    parameters = saliency.XRAIParameters(steps=steps)
    # Output selectors only: the ranked regions and the per-baseline attributions come back too.
    parameters.return_xrai_segments = True
    parameters.return_ig_attributions = True
    if isinstance(segments, Segments):
        segments = segments.masks()
    started = time.perf_counter()
    with _library_stage_clock(marks):
        output = saliency.XRAI().GetMaskWithDetails(image, call_model_function, batch_size=batch_size,
                                                    segments=segments, extra_parameters=parameters)
    finished = time.perf_counter()
    ig_end = marks["ig_end"]
    segmentation_s = marks.get("segmentation_end", ig_end) - marks.get("segmentation_start", ig_end)
    timings = {"segmentation_s": segmentation_s, "ig_s": ig_end - started,
               "ranking_s": finished - max(ig_end, marks.get("segmentation_end", ig_end)),
               "total_s": finished - started}
    # The map holds float32 gains in a float64 array: the cast to float32 is exact.
    return XraiResult(output.attribution_mask.astype(np.float32), output.segments,
                      np.mean(output.ig_attribution, axis=0), timings)
