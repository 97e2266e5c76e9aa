"""One radiograph -> every record size from a single decode (runs in the ingest worker processes).

Aspect policy: letterbox. The long side is resized to the target size with OpenCV INTER_AREA (area
averaging, the right filter for downsampling), and the short side is padded symmetrically with
black (0 after windowing: air), so anatomy is never stretched. The intensity window is computed once
on the full-resolution image (bnp_cxr.data.imaging.intensity_window) and applied after resizing.
Masks follow the same geometry; a mask pixel is set where at least half of its area was set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from bnp_cxr.data import imaging
from bnp_cxr.records.schema import UINT16_MAX, RecordImage
from bnp_cxr.rejects import Reject


@dataclass(frozen=True)
class Geometry:
    """Where a source image of shape (height, width) lands inside a size x size letterbox."""

    size: int
    scaled_height: int
    scaled_width: int
    top: int
    left: int

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.top + self.scaled_height, self.left + self.scaled_width


def letterbox_geometry(height: int, width: int, size: int) -> Geometry:
    """Geometry that fits (height, width) into size x size keeping the aspect ratio."""
    scale = size / max(height, width)
    scaled_height = min(size, max(1, round(height * scale)))
    scaled_width = min(size, max(1, round(width * scale)))
    return Geometry(size, scaled_height, scaled_width, (size - scaled_height) // 2, (size - scaled_width) // 2)


def letterbox(array: np.ndarray, geometry: Geometry, fill: float = 0) -> np.ndarray:
    """Resize with INTER_AREA into the geometry's box and pad to a square of `fill` (<= 4 channels kept)."""
    resized = cv2.resize(array, (geometry.scaled_width, geometry.scaled_height), interpolation=cv2.INTER_AREA)
    out = np.full((geometry.size, geometry.size, *resized.shape[2:]), fill, dtype=resized.dtype)
    out[geometry.top:geometry.top + geometry.scaled_height, geometry.left:geometry.left + geometry.scaled_width] = resized
    return out


class MaskStack:
    """Binary planes (lung mask, then each set bit of a bitmask) letterboxed together, few resizes per size.

    A target pixel is set where at least half of its source area was set: planes are scaled to 0/255
    and area-averaged in uint8. OpenCV's area resize takes at most 4 channels at non-integer scales,
    so planes are merged into contiguous chunks of 4 once, here, and each chunk is resized per size.
    """

    def __init__(self, lung: np.ndarray | None, components: np.ndarray | None):
        planes, self.bits = [], []
        if lung is not None:
            planes.append(cv2.LUT(lung.astype(np.uint8, copy=False), _SET_TO_255))
        present = int(np.bitwise_or.reduce(components, axis=None)) if components is not None else 0
        for bit in range(8):
            if present >> bit & 1:
                planes.append(cv2.LUT(components, _BIT_TO_255[bit]))
                self.bits.append(bit)
        self.has_lung, self.has_components = lung is not None, components is not None
        self.chunks = [planes[k] if len(planes[k:k + 4]) == 1 else cv2.merge(planes[k:k + 4])
                       for k in range(0, len(planes), 4)]

    def at(self, geometry: Geometry) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(lung 0/1 or None, component bitmask or None) in the geometry's letterbox."""
        size = geometry.size
        if not self.chunks:
            return None, (np.zeros((size, size), np.uint8) if self.has_components else None)
        planes = np.concatenate([letterbox(chunk, geometry).reshape(size, size, -1) for chunk in self.chunks],
                                axis=2) >= 128
        lung = planes[..., 0].astype(np.uint8) if self.has_lung else None
        components = None
        if self.has_components:
            components = np.zeros((size, size), np.uint8)
            for index, bit in enumerate(self.bits, start=int(self.has_lung)):
                components |= planes[..., index].astype(np.uint8) << bit
        return lung, components


_SET_TO_255 = np.where(np.arange(256) > 0, 255, 0).astype(np.uint8)
_BIT_TO_255 = [np.where(np.arange(256) >> bit & 1, 255, 0).astype(np.uint8) for bit in range(8)]


class MaskError(ValueError):
    """A mask file that cannot be used with its image."""

    def __init__(self, reason: str, column: str, detail: str):
        super().__init__(detail)
        self.reason, self.column, self.detail = reason, column, detail


def read_mask(path: str, shape: tuple[int, int], *, binary: bool, column: str) -> np.ndarray:
    """Read a PNG mask of the image's shape: binary -> 0/1, else the raw uint8 bitmask."""
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise MaskError("bad_mask", column, f"cannot read mask {path}")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise MaskError("mask_shape_mismatch", column, f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    if binary:
        # Masks come as 0/1 or 0/255 (0/65535); resized ones have blurred edges, hence half range.
        threshold = 0 if mask.max() <= 1 else np.iinfo(mask.dtype).max // 2
        return (mask > threshold).astype(np.uint8)
    return mask.astype(np.uint8)


@dataclass(frozen=True)
class Prepared:
    """Everything the writer needs about one row: a RecordImage per size plus source facts."""

    records: dict[int, RecordImage]
    source_shape: tuple[int, int]
    source_spacing_mm: tuple[float, float] | None


def model_image(pixels: np.ndarray, geometry: Geometry, window: tuple[float, float] | None = None) -> np.ndarray:
    """The stored image: letterboxed, intensity-windowed (the image's own window unless given), uint16."""
    window = imaging.intensity_window(pixels) if window is None else window
    # Padding with the window's low end makes it exactly 0 (air) after windowing.
    windowed = imaging.apply_window(letterbox(pixels, geometry, fill=window[0]), window)
    return np.rint(windowed * UINT16_MAX).astype(np.uint16)


def prepare_row(row, sizes: tuple[int, ...], allow_lateral: bool = False) -> Prepared | Reject:
    """Decode one row's image once and produce its records at every size, or say why not (reason, column, detail)."""
    try:
        radiograph = imaging.read_radiograph(row.abs_path, allow_lateral=allow_lateral)
    except imaging.RadiographError as error:
        return Reject(stage="image", reason=error.reason, column="image_path", detail=error.detail)
    pixels = radiograph.pixels
    shape = pixels.shape
    try:
        lung = read_mask(row.lung_mask_path, shape, binary=True, column="lung_mask_path") if row.lung_mask_path else None
        components = (read_mask(row.component_mask_path, shape, binary=False, column="component_mask_path")
                      if row.component_mask_path else None)
    except MaskError as error:
        return Reject(stage="image", reason=error.reason, column=error.column, detail=error.detail)
    masks = MaskStack(lung, components)
    window = imaging.intensity_window(pixels)
    spacing = radiograph.pixel_spacing_mm
    records = {}
    for size in sizes:
        geometry = letterbox_geometry(*shape, size)
        image = model_image(pixels, geometry, window)
        scale = max(shape) / size
        lung_mask, component_mask = masks.at(geometry)
        records[size] = RecordImage(
            image=image,
            lung_mask=lung_mask,
            component_mask=component_mask,
            pixel_spacing_mm=(spacing[0] * scale, spacing[1] * scale) if spacing else (math.nan, math.nan),
            content_box=geometry.content_box,
        )
    return Prepared(records=records, source_shape=shape, source_spacing_mm=spacing)


def prepare_safely(row, sizes: tuple[int, ...], allow_lateral: bool,
                   prepare: Callable[..., Prepared | Reject] = prepare_row) -> Prepared | Reject:
    """prepare(row, sizes, allow_lateral), an exception it raises becoming a `processing_error` reject."""
    # A bug or an unforeseen decoder error on one file must reject that row, not stop the archive.
    try:
        return prepare(row, sizes, allow_lateral)
    except Exception as error:  # noqa: BLE001 - reported per row in rejects.csv
        return Reject(stage="image", reason="processing_error", column="image_path",
                      detail=f"{type(error).__name__}: {error}")
