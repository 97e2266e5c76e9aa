"""Faithfulness and stability of attribution maps, in batched model calls.

`Forward` evaluates the explained model output (log10 BNPP or BNP) for a batch [B, H, W, 1]. Pixels are
ranked by the map's value, most relevant (largest) first; ties are broken by a seeded random order so
that region-constant maps (XRAI, upsampled Grad-CAM) do not favour the image's top rows.

- deletion / insertion (Petsiuk et al., RISE, BMVC 2018): the ranked pixels are replaced by a blurred copy
  of the image (Gaussian, sigma = `blur_sigma` x the side), `steps` equal fractions from 0 to 1; deletion
  starts from the image, insertion from the blurred copy. Each curve's area (trapezoid over the fraction
  removed, in output units) is one number: lower deletion and higher insertion are better;
- ROAD (Rong et al., ICML 2022, "remove and debias"): at each fraction (10-90 %) the most (MoRF) or least
  (LeRF) relevant pixels are removed and re-imputed by noisy linear imputation: each removed pixel is the
  weighted mean of its 8 neighbours (1/6 edge, 1/12 diagonal neighbours, the paper's weights), solved as
  one sparse linear system, plus Gaussian noise (sd `noise`, 0.01 as the paper). road_morf / road_lerf
  are the mean outputs over the fractions; road_gap = lerf - morf (higher = more faithful);
- max-sensitivity (Yeh et al., NeurIPS 2019): max over `samples` draws of uniform noise in [-r, r] (the
  input clipped to [0, 1]) of ||map(x + d) - map(x)|| / ||map(x)|| (Frobenius); lower = more stable.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
from scipy import ndimage

Forward = Callable[[np.ndarray], np.ndarray]
ROAD_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
# (row offset, column offset, weight): the 8-neighbourhood of ROAD's noisy linear imputation.
NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
              (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))


def batched_forward(forward: Forward, images: np.ndarray, batch_size: int) -> np.ndarray:
    """forward() over `images` in batches of at most `batch_size`, concatenated."""
    return np.concatenate([np.asarray(forward(images[start:start + batch_size]), dtype=np.float64).ravel()
                           for start in range(0, len(images), batch_size)])


def relevance_order(attribution: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, largest map value first, ties in a seeded random order."""
    values = np.asarray(attribution, dtype=np.float64).ravel()
    shuffle = np.random.default_rng(seed).permutation(values.size)
    return np.lexsort((shuffle, -values))


def _curve_area(outputs: np.ndarray) -> float:
    fractions = np.linspace(0.0, 1.0, len(outputs))
    return float(np.trapezoid(outputs, fractions))


def deletion_insertion(forward: Forward, image: np.ndarray, attribution: np.ndarray, *, steps: int = 20,
                       blur_sigma: float = 1 / 32, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Areas under the deletion and insertion curves of one image [H, W, 1] and its map [H, W]."""
    image = np.asarray(image, dtype=np.float32)
    blurred = ndimage.gaussian_filter(image, sigma=(blur_sigma * image.shape[0], blur_sigma * image.shape[1], 0))
    order = relevance_order(attribution, seed)
    counts = np.rint(np.linspace(0, order.size, steps + 1)).astype(int)
    deleted, inserted = [], []
    for count in counts:
        chosen = np.zeros(order.size, dtype=bool)
        chosen[order[:count]] = True
        chosen = chosen.reshape(image.shape[:2])[..., None]
        deleted.append(np.where(chosen, blurred, image))
        inserted.append(np.where(chosen, image, blurred))
    outputs = batched_forward(forward, np.stack(deleted + inserted), batch_size)
    return {"deletion_auc": _curve_area(outputs[:len(counts)]), "insertion_auc": _curve_area(outputs[len(counts):])}


def noisy_linear_imputation(image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """`image` [H, W] with the `removed` pixels re-imputed as the weighted mean of their neighbours, plus noise."""
    image = np.asarray(image, dtype=np.float64)
    height, width = image.shape
    unknown = np.flatnonzero(removed)
    if unknown.size == 0:
        return image.copy()
    index = np.full(image.size, -1)
    index[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    diagonal, right = np.zeros(unknown.size), np.zeros(unknown.size)
    entries = []
    for d_row, d_col, weight in NEIGHBOURS:
        r, c = rows + d_row, cols + d_col
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        at = np.flatnonzero(inside)
        neighbour = r[inside] * width + c[inside]
        code = index[neighbour]
        diagonal[at] += weight
        entries.append((at[code >= 0], code[code >= 0], np.full(int((code >= 0).sum()), -weight)))
        np.add.at(right, at[code < 0], weight * image.ravel()[neighbour[code < 0]])
    entries.append((np.arange(unknown.size), np.arange(unknown.size), diagonal))
    i, j, v = (np.concatenate(parts) for parts in zip(*entries))
    # Non-singular while any pixel is known: every connected group of removed pixels then borders a known one.
    solved = sparse_linalg.spsolve(sparse.csc_matrix((v, (i, j)), shape=(unknown.size, unknown.size)), right)
    rng = rng or np.random.default_rng(0)
    out = image.ravel().copy()
    out[unknown] = solved + noise * rng.standard_normal(unknown.size)
    return out.reshape(height, width)


def road(forward: Forward, image: np.ndarray, attribution: np.ndarray, *,
         fractions: Sequence[float] = ROAD_FRACTIONS, noise: float = 0.01, batch_size: int = 32,
         seed: int = 0) -> dict[str, float]:
    """ROAD of one image [H, W, 1]: mean output after removing the most (MoRF) / least (LeRF) relevant fractions."""
    image = np.asarray(image, dtype=np.float32)
    order = relevance_order(attribution, seed)
    rng = np.random.default_rng(seed)
    imputed = []
    for ranking in (order, order[::-1]):
        for fraction in fractions:
            removed = np.zeros(order.size, dtype=bool)
            removed[ranking[:int(round(fraction * order.size))]] = True
            imputed.append(noisy_linear_imputation(image[..., 0], removed.reshape(image.shape[:2]), noise=noise,
                                                   rng=rng))
    batch = np.clip(np.stack(imputed), 0.0, 1.0).astype(np.float32)[..., None]
    outputs = batched_forward(forward, batch, batch_size)
    morf, lerf = float(outputs[:len(fractions)].mean()), float(outputs[len(fractions):].mean())
    return {"road_morf": morf, "road_lerf": lerf, "road_gap": lerf - morf}


def max_sensitivity(explain: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *, radius: float = 0.02,
                    samples: int = 3, seed: int = 0) -> float:
    """Max relative change of the map over `samples` uniform perturbations of radius `radius`; NaN for a zero map."""
    image = np.asarray(image, dtype=np.float32)
    rng = np.random.default_rng(seed)
    noisy = np.clip(image[None] + rng.uniform(-radius, radius, size=(samples, *image.shape)), 0.0, 1.0)
    maps = np.asarray(explain(np.concatenate([image[None], noisy.astype(np.float32)])), dtype=np.float64)
    reference = np.linalg.norm(maps[0])
    if reference == 0:
        return math.nan
    return float(max(np.linalg.norm(other - maps[0]) for other in maps[1:]) / reference)
