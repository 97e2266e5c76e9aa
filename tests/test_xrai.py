"""Fast XRAI against saliency.core.XRAI: segments, normalisation, ranking, integrated gradients, end to end.

Segmentation, ranking and the XRAI maps are compared with the library and must be bit-identical (same
masks, same region order, same map values). Integrated gradients are compared at the same batch size,
where the model sees the library's batches: the only freedom left is float32 summation order, so their
tolerance is 1e-6 of the largest attribution.
"""

from pathlib import Path

import numpy as np
import pytest
import saliency.core as saliency
import tensorflow as tf
from saliency.core import xrai as saliency_xrai
from scipy.ndimage import gaussian_filter

from bnp_cxr.attribution.callbacks import ModelGradients
from bnp_cxr.attribution.xrai import (Segments, XraiResult, clear_segment_cache, default_baselines,
                                      integrated_gradients, rank_regions, xrai_map, xrai_segments)
from bnp_cxr.attribution.xrai_segments import _normalize_for_segmentation, compute_segments
from bnp_cxr.models import build_model


def _noise(shape, rng):
    return rng.random(shape)


def _blobs(shape, rng):
    return gaussian_filter(rng.standard_normal(shape), sigma=min(shape) / 12)


def _radiograph(shape, rng):
    """Phantom-like chest film: bright body, dark lungs, spine, ribs, quantum noise, quantised to 12 bits."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] / np.array(shape).reshape(2, 1, 1)
    body = ((xs - 0.5) / 0.45) ** 2 + ((ys - 0.55) / 0.55) ** 2 < 1
    lungs = sum(((xs - cx) / 0.17) ** 2 + ((ys - 0.45) / 0.3) ** 2 < 1 for cx in (0.3, 0.7))
    ribs = 0.08 * (np.sin(ys * 40 + 6 * (xs - 0.5) ** 2) > 0.6) * (lungs > 0)
    spine = 0.3 * np.exp(-((xs - 0.5) / 0.04) ** 2)
    film = 0.15 + 0.5 * body - 0.35 * (lungs > 0) + ribs + spine + 0.02 * rng.standard_normal(shape)
    return np.round(np.clip(film, 0, 1) * 4095) / 4095


def _nearly_constant(shape, rng):
    return 0.5 + 1e-3 * rng.random(shape)


IMAGES = {"noise": _noise, "blobs": _blobs, "radiograph": _radiograph, "nearly_constant": _nearly_constant}


def make_image(kind: str, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A float32 [H, W, 1] image in [0, 1] of the given kind."""
    image = IMAGES[kind](shape, np.random.default_rng(seed))
    image = (image - image.min()) / (image.max() - image.min()) if kind != "nearly_constant" else image
    return image.astype(np.float32)[..., None]


def make_attribution(kind: str, shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A base attribution [H, W, 1] float32: smooth, noisy or full of exact ties."""
    rng = np.random.default_rng(seed)
    if kind == "smooth":
        values = gaussian_filter(rng.standard_normal(shape), sigma=min(shape) / 10)
    elif kind == "noise":
        values = rng.standard_normal(shape) * 1e-4
    elif kind == "ties":  # few distinct values: many segments share a gain exactly
        values = rng.integers(0, 3, shape) * 0.1
    else:
        values = np.full(shape, 0.1)
    return values.astype(np.float32)[..., None]


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not be called when base_attribution is given")


def library_xrai(image, attribution, segments=None, **parameters):
    """The library's GetMaskWithDetails on a given base attribution: (map, rank map)."""
    extra = saliency.XRAIParameters(**parameters)
    extra.return_xrai_segments = True
    output = saliency.XRAI().GetMaskWithDetails(image, _no_model, base_attribution=attribution, segments=segments,
                                                extra_parameters=extra)
    return output.attribution_mask, output.segments


@pytest.mark.parametrize("kind, shape", [
    ("noise", (64, 64)), ("blobs", (100, 100)), ("radiograph", (96, 160)), ("nearly_constant", (64, 64)),
    ("radiograph", (256, 256)),
])
def test_segments_identical_to_library(kind, shape):
    image = make_image(kind, shape)
    expected = saliency_xrai._get_segments_felzenszwalb(image)
    clear_segment_cache()
    masks = xrai_segments(image)
    assert len(masks) == len(expected)
    for mine, theirs in zip(masks, expected):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)


@pytest.mark.parametrize("shape, dtype", [((64, 64), np.float32), ((300, 200), np.float32), ((224, 224), np.float32),
                                          ((150, 500), np.float64), ((512, 512), np.float32)])
def test_normalization_bit_identical(shape, dtype):
    image = make_image("radiograph", shape).astype(dtype)
    expected = saliency_xrai._normalize_image(image, saliency_xrai._FELZENSZWALB_IM_VALUE_RANGE,
                                              saliency_xrai._FELZENSZWALB_IM_RESIZE)
    normalized = _normalize_for_segmentation(image)
    assert normalized.dtype == expected.dtype and np.array_equal(normalized, expected)


@pytest.mark.parametrize("image_kind, attribution_kind, shape", [
    ("radiograph", "smooth", (64, 64)),
    ("radiograph", "noise", (100, 100)),
    ("blobs", "ties", (64, 64)),
    ("noise", "constant", (64, 64)),
    ("nearly_constant", "smooth", (64, 64)),
    ("radiograph", "ties", (96, 160)),
    ("radiograph", "smooth", (224, 224)),
])
def test_ranking_identical_to_library(image_kind, attribution_kind, shape):
    image = make_image(image_kind, shape)
    attribution = make_attribution(attribution_kind, shape)
    segments = compute_segments(image)
    expected_map, expected_ranks = library_xrai(image, attribution, segments=segments.masks())
    attribution_map, ranks = rank_regions(attribution, segments)
    assert ranks.dtype == expected_ranks.dtype and attribution_map.dtype == expected_map.dtype
    np.testing.assert_array_equal(ranks, expected_ranks)
    np.testing.assert_array_equal(attribution_map, expected_map)
    assert ranks.max() > 5  # a real ranking, not one region


@pytest.mark.parametrize("area_threshold, min_pixel_diff", [(0.3, 50), (1.0, 1), (1.0, 400)])
def test_unflattened_masks_and_other_parameters(area_threshold, min_pixel_diff):
    image, attribution = make_image("radiograph", (64, 64)), make_attribution("smooth", (64, 64))[..., 0]
    masks = xrai_segments(image)
    expected_map, expected_masks = saliency.XRAI._xrai(attribution, masks, area_perc_th=area_threshold,
                                                       min_pixel_diff=min_pixel_diff, integer_segments=False)
    attribution_map, ranked = rank_regions(attribution, masks, area_threshold=area_threshold,
                                           min_pixel_diff=min_pixel_diff, integer_segments=False)
    np.testing.assert_array_equal(attribution_map, expected_map)
    assert len(ranked) == len(expected_masks)
    assert all(np.array_equal(mine, theirs) for mine, theirs in zip(ranked, expected_masks))


def test_segments_cache_and_crops():
    image = make_image("blobs", (64, 64))
    clear_segment_cache()
    first = compute_segments(image)
    assert compute_segments(image.copy()) is first  # keyed by content, not identity
    assert compute_segments(make_image("blobs", (64, 64), seed=5)) is not first
    again = Segments.from_masks(first.masks())
    assert len(again) == len(first)
    assert all(np.array_equal(again.mask(i), first.mask(i)) for i in range(len(first)))


@pytest.mark.parametrize("attribution, segments, error", [
    (np.full((32, 32), np.nan, np.float32), [np.ones((32, 32), bool)], ValueError),
    (np.zeros((32, 32), np.int64), [np.ones((32, 32), bool)], TypeError),
    (np.zeros((32, 32), np.float32), [np.ones((16, 16), bool)], ValueError),
    (np.zeros((32, 32), np.float32), [], ValueError),
])
def test_ranking_rejects_bad_input(attribution, segments, error):
    with pytest.raises(error):
        rank_regions(attribution, segments)


@pytest.fixture(scope="module")
def gradients():
    tf.keras.utils.set_random_seed(0)
    return ModelGradients(build_model("small_cnn", 64), "bnpp")


@pytest.mark.parametrize("baseline_index, batch_size, steps", [(0, 32, 100), (1, 7, 20), (0, 1, 10)])
def test_integrated_gradients_match_library(gradients, baseline_index, batch_size, steps):
    image = make_image("radiograph", (64, 64))
    baseline = default_baselines(image)[baseline_index]
    expected = saliency.IntegratedGradients().GetMask(image, gradients.call_model_function, x_baseline=baseline,
                                                      x_steps=steps, batch_size=batch_size)
    attribution = integrated_gradients(gradients, image, baseline, steps=steps, batch_size=batch_size)
    assert attribution.dtype == np.float32 and attribution.shape == image.shape
    assert np.abs(attribution - expected).max() <= 1e-6 * np.abs(expected).max()


@pytest.mark.parametrize("kind", ["radiograph", "blobs"])
def test_xrai_map_fast_matches_reference(gradients, kind):
    image = make_image(kind, (64, 64), seed=3)
    reference = xrai_map(gradients.model, image, impl="reference", gradients=gradients, steps=20, batch_size=16)
    fast = xrai_map(gradients.model, image, impl="fast", gradients=gradients, steps=20, batch_size=16)
    for result in (reference, fast):
        assert isinstance(result, XraiResult) and result.attribution.dtype == np.float32
        assert result.attribution.shape == result.ranks.shape == image.shape[:2]
        assert set(result.timings) == {"segmentation_s", "ig_s", "ranking_s", "total_s"}
    scale = np.abs(reference.base_attribution).max()
    assert np.abs(fast.base_attribution - reference.base_attribution).max() <= 1e-6 * scale
    np.testing.assert_array_equal(fast.ranks, reference.ranks)
    np.testing.assert_array_equal(fast.attribution, reference.attribution)
    masks = fast.ranked_masks()
    assert len(masks) == fast.ranks.max() and np.array_equal(np.sum(masks, axis=0), np.ones(image.shape[:2]))


def test_xrai_map_arguments(gradients):
    image = make_image("noise", (64, 64))
    with pytest.raises(ValueError, match="not 'bnp'"):
        xrai_map(gradients.model, image, target="bnp", gradients=gradients)
    with pytest.raises(ValueError, match="unknown XRAI implementation"):
        xrai_map(gradients.model, image, impl="quick", gradients=gradients)
    given = xrai_segments(image)
    result = xrai_map(gradients.model, image, gradients=gradients, steps=4, batch_size=8, segments=given)
    expected_map, expected_ranks = library_xrai(image, result.base_attribution, segments=given)
    np.testing.assert_array_equal(result.ranks, expected_ranks)
    np.testing.assert_array_equal(result.attribution, expected_map)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# One PNG and one DICOM. The library's own XRAI took 25 s at 512 px and 44 s at 1024 px on 2 busy shared cores.
REAL_RADIOGRAPHS = [("nih/images/00000129_000.png", 512), ("dicom/CR-MONO1-10-chest.dcm", 1024)]


def tiny_gradients(size: int) -> ModelGradients:
    """Gradients of a seeded two-conv model at `size` px: cheap at 1024 px, with a spatial map for the regions."""
    tf.keras.utils.set_random_seed(0)
    image = tf.keras.Input((size, size, 1))
    x = tf.keras.layers.Conv2D(4, 5, strides=4, activation="relu")(image)
    x = tf.keras.layers.Conv2D(4, 3, strides=2, activation="tanh")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return ModelGradients(tf.keras.Model(image, tf.keras.layers.Dense(2)(x)), "bnpp")


def letterboxed(path: Path, size: int) -> np.ndarray:
    """A real radiograph as the records writer stores it, as a model input float32 [size, size, 1] in [0, 1]."""
    from bnp_cxr.data.imaging import read_radiograph
    from bnp_cxr.records.prepare import letterbox_geometry, model_image

    pixels = read_radiograph(str(path)).pixels
    stored = model_image(pixels, letterbox_geometry(*pixels.shape, size))
    return (stored.astype(np.float32) / np.iinfo(stored.dtype).max)[..., None]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no real radiographs: {SHARED_DATA} is absent")
@pytest.mark.parametrize("name, size", REAL_RADIOGRAPHS)
def test_xrai_map_fast_matches_reference_on_real_radiographs(name, size):
    image = letterboxed(SHARED_DATA / name, size)
    gradients = tiny_gradients(size)
    clear_segment_cache()
    reference = xrai_map(gradients.model, image, impl="reference", gradients=gradients, steps=4, batch_size=8)
    fast = xrai_map(gradients.model, image, impl="fast", gradients=gradients, steps=4, batch_size=8)
    assert reference.ranks.max() > 5  # a real ranking of many regions
    np.testing.assert_array_equal(fast.ranks, reference.ranks)
    np.testing.assert_array_equal(fast.attribution, reference.attribution)
