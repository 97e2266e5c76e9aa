"""XRAI's regions, fast and identical to `saliency.core.XRAI`: Felzenszwalb segments and the greedy ranking.

Kapishnikov et al., "XRAI: Better Attributions Through Regions", ICCV 2019 (arXiv 1906.02825); reference
code: PAIR `saliency` 0.2.1, `saliency/core/xrai.py` (`_get_segments_felzenszwalb`, `XRAI._xrai`).

The library keeps every segment as a full-resolution boolean mask: it dilates each one at full size
and, in every greedy step, recomputes every remaining mask's gain over the whole image. Here a segment is
a crop of its bounding box, dilated with OpenCV inside that box, and the ranking keeps each segment's
uncovered pixel count and attribution sum, updating only the segments that the newly added region touches.
Those float64 sums only shortlist the candidates; a candidate's gain is then recomputed exactly as the
library does (the float32 mean of the same pixels in the same row-major order), so the chosen region,
its value and the tie-breaking (first segment wins) are bit-identical to the reference.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
from saliency.core import xrai as saliency_xrai
from scipy import ndimage
from scipy.ndimage import _interpolation as ndi_interpolation
from scipy.ndimage import _nd_image, _ni_support
from skimage import segmentation
from skimage.morphology import disk
from skimage.transform import _warps as skimage_warps
from skimage.transform import resize

# saliency's `_get_segments_felzenszwalb(dilation_rad=5)` default, used by XRAI.GetMaskWithDetails.
DILATION_RADIUS_PX = 5
# saliency's XRAIParameters().experimental_params['min_pixel_diff'].
MIN_PIXEL_DIFF = 50
_CACHE_ENTRIES = 8


@dataclass(frozen=True, eq=False)
class Segments:
    """XRAI segments as bounding-box crops: mask i is `crops[i]` placed at `boxes[i]` (top, left, bottom, right)."""

    shape: tuple[int, int]
    boxes: np.ndarray  # [M, 4] int64, bottom/right exclusive; (0, 0, 0, 0) for an empty mask
    crops: tuple[np.ndarray, ...]  # bool, crops[i].shape == (bottom - top, right - left)

    def __len__(self) -> int:
        return len(self.crops)

    def mask(self, index: int) -> np.ndarray:
        """Full-size bool mask of segment `index`."""
        full = np.zeros(self.shape, dtype=bool)
        top, left, bottom, right = self.boxes[index]
        full[top:bottom, left:right] = self.crops[index]
        return full

    def masks(self) -> list[np.ndarray]:
        """All segments as full-size bool masks (the library's `segments=` format)."""
        return [self.mask(index) for index in range(len(self))]

    @classmethod
    def from_masks(cls, masks: Sequence[np.ndarray]) -> Segments:
        """Crop full-size bool masks (e.g. the library's own segments) to their bounding boxes."""
        if not len(masks):
            raise ValueError("XRAI needs at least one segment")
        shape = tuple(np.shape(masks[0]))
        boxes, crops = [], []
        for mask in masks:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != shape:
                raise ValueError(f"segment masks differ in shape: {mask.shape} vs {shape}")
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) if rows.size else (0, 0, 0, 0)
            boxes.append(box)
            crops.append(np.ascontiguousarray(mask[box[0]:box[2], box[1]:box[3]]))
        return cls(shape, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), tuple(crops))


@lru_cache(maxsize=16)
def _nearest_source_index(source_shape: tuple[int, int], target_shape: tuple[int, int]) -> np.ndarray:
    """Flat source index each target pixel takes under the library's order-0 skimage resize (-1: fill value)."""
    # Resizing the (index + 1) image with the very call the library applies to each label map gives the
    # same pixel selection for every map at once; 0 marks pixels that resize fills with its cval.
    index = np.arange(1, source_shape[0] * source_shape[1] + 1, dtype=np.float64).reshape(source_shape)
    picked = resize(index, target_shape, order=0, preserve_range=True, mode="constant", anti_aliasing=False)
    return np.rint(picked).astype(np.int64) - 1


def _resize_one_channel(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The library's skimage `resize(image [H, W, 1], shape, order=3, anti_aliasing=True, ...)`, bit for bit.

    skimage hands the [H, W, 1] array to `scipy.ndimage.zoom`, which pads every axis by 12 for its
    'grid-constant' spline prefilter, so the channel axis becomes 25 planes and the three filter passes
    run over 25x the pixels (most of the library's segmentation time at 1024 px). The planes other than
    the image's own stay zero through the first two passes, so those passes run here on the image plane
    alone; the channel pass and the interpolation are scipy's own routines on the same padded array.
    """
    mode, cval, order = skimage_warps._to_ndimage_mode("constant"), 0.0, 3
    output_shape = (*shape, 1)
    factors = np.divide(image.shape, output_shape)
    filtered = ndimage.gaussian_filter(image, np.maximum(0, (factors - 1) / 2), cval=cval, mode=mode)
    plane, npad = ndi_interpolation._prepad_for_spline_filter(filtered[..., 0], mode, cval)
    coefficients_2d = np.empty(plane.shape, dtype=np.float64)
    ndimage.spline_filter1d(plane, order, 0, output=coefficients_2d, mode=mode)
    ndimage.spline_filter1d(coefficients_2d, order, 1, output=coefficients_2d, mode=mode)
    coefficients = np.zeros((*plane.shape, 2 * npad + 1), dtype=np.float64)
    coefficients[..., npad] = coefficients_2d
    ndimage.spline_filter1d(coefficients, order, 2, output=coefficients, mode=mode)
    zoom = np.ascontiguousarray(np.divide(image.shape, output_shape, dtype=np.float64))
    out = np.empty(output_shape, dtype=filtered.dtype)
    _nd_image.zoom_shift(coefficients, zoom, None, out, order, _ni_support._extend_mode_to_code(mode), cval, npad,
                         True)
    skimage_warps._clip_warp_output(image, out, "constant", cval, True)
    return out


def _normalize_for_segmentation(image: np.ndarray) -> np.ndarray:
    """saliency's `_normalize_image(image, [-1, 1], (224, 224))`, bit for bit, faster for one channel."""
    value_range, shape = saliency_xrai._FELZENSZWALB_IM_VALUE_RANGE, tuple(saliency_xrai._FELZENSZWALB_IM_RESIZE)
    normalized = saliency_xrai._normalize_image(image, value_range)  # the library resizes right after this
    if (normalized.ndim != 3 or normalized.shape[2] != 1 or normalized.dtype not in (np.float32, np.float64)
            or normalized.shape[:2] == shape):
        return saliency_xrai._normalize_image(image, value_range, shape)
    return _resize_one_channel(normalized, shape)


def felzenszwalb_label_maps(image: np.ndarray) -> list[np.ndarray]:
    """The library's Felzenszwalb label maps (one per scale) at the image's size, before unpacking and dilation."""
    image = np.asarray(image)
    shape = image.shape[:2]
    normalized = _normalize_for_segmentation(image)
    source = _nearest_source_index(tuple(normalized.shape[:2]), tuple(shape))
    outside = source < 0
    maps = []
    for scale in saliency_xrai._FELZENSZWALB_SCALE_VALUES:
        for sigma in saliency_xrai._FELZENSZWALB_SIGMA_VALUES:
            labels = segmentation.felzenszwalb(normalized, scale=scale, sigma=sigma,
                                               min_size=saliency_xrai._FELZENSZWALB_MIN_SEGMENT_SIZE)
            full = labels.ravel()[np.where(outside, 0, source)]
            full[outside] = 0
            maps.append(full.astype(int))
    return maps


def segments_from_label_maps(label_maps: Sequence[np.ndarray],
                             dilation_radius_px: int = DILATION_RADIUS_PX) -> Segments:
    """A dilated segment per label in [min, max] of each map, in the library's order (absent labels: empty)."""
    shape = label_maps[0].shape
    footprint = disk(dilation_radius_px).astype(np.uint8)
    pad = dilation_radius_px
    boxes, crops = [], []
    for labels in label_maps:
        low = int(labels.min())
        # find_objects wants labels >= 1; its slices are each label's bounding box (None when absent).
        for offset, found in enumerate(ndimage.find_objects(labels - low + 1)):
            if found is None:
                boxes.append((0, 0, 0, 0))
                crops.append(np.zeros((0, 0), dtype=bool))
                continue
            # A disk dilation reaches exactly `pad` pixels beyond the segment's box along each axis.
            top, left = max(found[0].start - pad, 0), max(found[1].start - pad, 0)
            bottom, right = min(found[0].stop + pad, shape[0]), min(found[1].stop + pad, shape[1])
            crop = (labels[top:bottom, left:right] == low + offset).view(np.uint8)
            if pad:
                # Zero border == skimage's reflect mode here: a reflected pixel lies within the same
                # symmetric disk of the centre, so it adds nothing beyond the in-image neighbours.
                crop = cv2.dilate(crop, footprint, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            boxes.append((top, left, bottom, right))
            crops.append(crop.view(bool))
    return Segments(tuple(shape), np.asarray(boxes, dtype=np.int64).reshape(-1, 4), tuple(crops))


_SEGMENT_CACHE: OrderedDict[tuple, Segments] = OrderedDict()


def compute_segments(image: np.ndarray, *, cache: bool = True) -> Segments:
    """XRAI segments of `image` [H, W, C], as the library computes them; cached per image content and size."""
    image = np.ascontiguousarray(image)
    key = (image.shape, image.dtype.str, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
    if cache and key in _SEGMENT_CACHE:
        _SEGMENT_CACHE.move_to_end(key)
        return _SEGMENT_CACHE[key]
    segments = segments_from_label_maps(felzenszwalb_label_maps(image))
    if cache:
        _SEGMENT_CACHE[key] = segments
        while len(_SEGMENT_CACHE) > _CACHE_ENTRIES:
            _SEGMENT_CACHE.popitem(last=False)
    return segments


def clear_segment_cache() -> None:
    """Forget cached segments (benchmarks time a cold segmentation)."""
    _SEGMENT_CACHE.clear()


def xrai_segments(image: np.ndarray) -> list[np.ndarray]:
    """Full-size bool masks identical to saliency's `_get_segments_felzenszwalb(image)` (incl. disk(5) dilation)."""
    return compute_segments(image).masks()


def _exact_gain(attr: np.ndarray, covered: np.ndarray, box: np.ndarray,
                crop: np.ndarray) -> tuple[np.floating, np.ndarray]:
    """The library's `_gain_density(mask, attr, covered)` and the new pixels (crop-shaped) it averages.

    `attr[box][new]` lists the same pixels in the same row-major order as the library's full-size
    `attr[mask & ~covered]`, so numpy's pairwise float32 mean returns the very same value.
    """
    top, left, bottom, right = box
    new = crop & ~covered[top:bottom, left:right]
    return attr[top:bottom, left:right][new].mean(), new


def _shortlist(candidates: np.ndarray, count: np.ndarray, total: np.ndarray, magnitude: np.ndarray,
               initial_magnitude: np.ndarray, eps: float) -> np.ndarray:
    """Segments whose exact gain may be the largest, given float64 running sums of their uncovered pixels."""
    n = count[candidates].astype(np.float64)
    approx = total[candidates] / n
    # numpy's pairwise float32 sum errs by at most ~(25 + log2 n) * eps/2 * sum|a| (16-element runs in
    # 8 accumulators, then one rounding per halving), the division by another eps/2; the running float64
    # sums lose at most one float64 rounding of the initial magnitude per update. Doubled for safety.
    tolerance = ((25 + np.log2(n)) * eps * magnitude[candidates]
                 + 2 * (len(count) + 64) * np.finfo(np.float64).eps * initial_magnitude[candidates]) / n
    tolerance += 2 * eps * np.abs(approx)
    return candidates[approx + tolerance >= (approx - tolerance).max()]


def rank_regions(attribution: np.ndarray, segments: Segments | Sequence[np.ndarray], *, area_threshold: float = 1.0,
                 min_pixel_diff: int = MIN_PIXEL_DIFF, integer_segments: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
    """saliency's greedy `XRAI._xrai(attr, segs)` with gain = density, same output (attribution map, ranks or masks).

    `attribution` is [H, W] or [H, W, C] (channels max-aggregated as the library does); the map is float64
    [H, W]; with `integer_segments` the second output is an int [H, W] rank map (1 = most important),
    otherwise the list of added regions, most important first, as the library returns them.
    """
    attr, segments = _checked_inputs(attribution, segments)
    boxes, crops = segments.boxes, segments.crops
    count = np.array([crop.sum() for crop in crops], dtype=np.int64)
    total, magnitude = np.zeros(len(crops)), np.zeros(len(crops))
    for index, ((top, left, bottom, right), crop) in enumerate(zip(boxes, crops)):
        values = attr[top:bottom, left:right][crop]
        total[index], magnitude[index] = values.sum(dtype=np.float64), np.abs(values).sum(dtype=np.float64)
    initial_magnitude = magnitude.copy()
    eps = float(np.finfo(attr.dtype).eps)

    alive = np.ones(len(crops), dtype=bool)
    covered = np.zeros(attr.shape, dtype=bool)
    step_of_pixel = np.full(attr.shape, -1, dtype=np.int64)
    gains: list[np.floating] = []
    covered_pixels = 0
    while covered_pixels / attr.size <= area_threshold:
        alive &= count >= min_pixel_diff
        candidates = np.flatnonzero(alive)
        if not candidates.size:
            break
        # The library keeps the first segment (in input order) with the largest gain.
        best, gain, new = -1, -np.inf, None
        for index in _shortlist(candidates, count, total, magnitude, initial_magnitude, eps):
            candidate_gain, candidate_new = _exact_gain(attr, covered, boxes[index], crops[index])
            if candidate_gain > gain:
                best, gain, new = index, candidate_gain, candidate_new
        alive[best] = False
        rows, cols = np.flatnonzero(new.any(axis=1)), np.flatnonzero(new.any(axis=0))
        new = new[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        top, left = boxes[best][0] + rows[0], boxes[best][1] + cols[0]
        bottom, right = top + new.shape[0], left + new.shape[1]
        step_of_pixel[top:bottom, left:right][new] = len(gains)
        covered[top:bottom, left:right] |= new
        covered_pixels += int(count[best])
        gains.append(gain)
        _remove_pixels(attr, new, (top, left, bottom, right), boxes, crops, alive, count, total, magnitude)

    return _ranked_output(attr, gains, step_of_pixel, integer_segments)


def _checked_inputs(attribution: np.ndarray, segments: Segments | Sequence[np.ndarray]) -> tuple[np.ndarray, Segments]:
    """rank_regions' inputs as a float [H, W] map and Segments of the same shape, or a clear error."""
    attr = np.asarray(attribution)
    if attr.ndim == 3:
        attr = attr.max(axis=-1)  # saliency's _attr_aggregation_max
    if attr.dtype not in (np.float32, np.float64):
        raise TypeError(f"attribution must be float32 or float64, got {attr.dtype}")
    if not np.isfinite(attr).all():
        raise ValueError("attribution has non-finite values")
    if not isinstance(segments, Segments):
        segments = Segments.from_masks(segments)
    if tuple(segments.shape) != attr.shape:
        raise ValueError(f"segments are {segments.shape}, attribution is {attr.shape}")
    return attr, segments


def _ranked_output(attr: np.ndarray, gains: list, step_of_pixel: np.ndarray, integer_segments: bool
                   ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
    """The library's outputs from the greedy steps: the attribution map and the rank map (or region masks)."""
    uncomputed = step_of_pixel < 0
    order = [step for step, _ in sorted(enumerate(gains), key=lambda item: -item[1])]  # the library's stable sort
    value_of_step = np.append(np.array(gains, dtype=np.float64), attr[uncomputed].mean() if uncomputed.any() else 0.0)
    attribution_map = value_of_step[step_of_pixel]  # step -1 (never covered) takes the last entry
    if not integer_segments:
        masks = [step_of_pixel == step for step in order]
        return attribution_map, masks + [uncomputed] if uncomputed.any() else masks
    rank_of_step = np.empty(len(gains) + 1, dtype=np.int64)
    rank_of_step[order] = np.arange(1, len(gains) + 1)
    rank_of_step[-1] = len(gains) + 1
    return attribution_map, rank_of_step[step_of_pixel]


def _remove_pixels(attr: np.ndarray, new: np.ndarray, box: tuple[int, int, int, int], boxes: np.ndarray,
                   crops: Sequence[np.ndarray], alive: np.ndarray, count: np.ndarray, total: np.ndarray,
                   magnitude: np.ndarray) -> None:
    """Take the newly covered pixels (`new` at `box`) out of the running sums of every live segment they touch."""
    top, left, bottom, right = box
    touched = alive & (boxes[:, 0] < bottom) & (boxes[:, 2] > top) & (boxes[:, 1] < right) & (boxes[:, 3] > left)
    region = attr[top:bottom, left:right]
    for index in np.flatnonzero(touched):
        seg_top, seg_left, seg_bottom, seg_right = boxes[index]
        r0, r1 = max(seg_top, top), min(seg_bottom, bottom)
        c0, c1 = max(seg_left, left), min(seg_right, right)
        both = new[r0 - top:r1 - top, c0 - left:c1 - left] & crops[index][r0 - seg_top:r1 - seg_top,
                                                                          c0 - seg_left:c1 - seg_left]
        values = region[r0 - top:r1 - top, c0 - left:c1 - left][both]
        if values.size:
            count[index] -= values.size
            total[index] -= values.sum(dtype=np.float64)
            magnitude[index] -= np.abs(values).sum(dtype=np.float64)
