"""Figure panels: the overlay colours where the map is hot, the files, their layout and fonts."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.text import Text

from bnp_cxr.attribution.panels import (FONT_PT, PANEL_WIDTH_IN, attribution_panel, normalised, overlay_image, overlay_rgb,
                            panel_figure)

SIZES = (32, 64)
METHODS = ("vanilla", "gradcam", "xrai")


def radiograph(size: int) -> np.ndarray:
    """A gray gradient with two darker 'lungs'."""
    y, _ = np.mgrid[0:size, 0:size] / size
    return 0.35 + 0.4 * y - 0.2 * lung_mask(size)


def lung_mask(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return ((np.abs(x - 0.3) < 0.12) | (np.abs(x - 0.7) < 0.12)) & (np.abs(y - 0.5) < 0.25)


def hot_quadrant(size: int, method: str) -> np.ndarray:
    """Top-left quadrant hot; elsewhere cold (XRAI: negative regions, as XRAI gains can be)."""
    attribution = np.full((size, size), -0.2 if method == "xrai" else 0.0)
    attribution[: size // 2, : size // 2] = 1.0
    return attribution


def saturation(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].max(axis=-1) - rgb[..., :3].min(axis=-1)


@pytest.mark.parametrize("method", METHODS)
def test_overlay_coloured_where_hot_and_gray_elsewhere(method):
    size = 40
    image, hot = radiograph(size), hot_quadrant(size, method)
    # XRAI keeps the whole hot quadrant (25 %): a region tied at the top-10 % threshold stays whole.
    rgb = overlay_rgb(image, hot, method).rgb
    assert rgb.shape == (size, size, 3) and 0 <= rgb.min() and rgb.max() <= 1
    hot_pixels, cold_pixels = hot > 0, hot <= 0
    assert saturation(rgb)[hot_pixels].min() > 0.2  # coloured
    assert saturation(rgb)[cold_pixels].max() < 1e-9  # still gray
    if method == "xrai":  # outside the top regions the radiograph is dimmed, not hidden
        np.testing.assert_allclose(rgb[cold_pixels][:, 0], 0.4 * image[cold_pixels])
    else:
        np.testing.assert_allclose(rgb[cold_pixels][:, 0], image[cold_pixels])


def test_vanilla_scale_ignores_a_few_extreme_pixels():
    """Per-cell 99.5th percentile: one huge gradient does not wash every other pixel out."""
    attribution = np.random.default_rng(0).uniform(0, 1, (50, 50))
    attribution[0, 0] = 1e6
    values, _ = normalised(attribution, "vanilla")
    assert values[0, 0] == 1.0 and np.median(values) > 0.4


def test_xrai_keeps_the_top_fraction_of_regions():
    regions = np.repeat(np.arange(10.0), 10)[None].repeat(10, axis=0)  # 10 constant regions of 10 % each
    for fraction, kept in ((0.10, 10), (0.30, 30)):
        values, shown = normalised(regions, "xrai", fraction)
        assert shown.sum() == kept * 10 and shown[:, -1].all() and not shown[:, 0].any()


def test_overlay_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        overlay_rgb(radiograph(32), np.zeros((16, 16)))


@pytest.fixture(scope="module")
def inputs():
    radiographs = {size: radiograph(size) for size in SIZES}
    maps = {(method, size): hot_quadrant(size, method) for method in METHODS for size in SIZES}
    return radiographs, maps, {size: lung_mask(size) for size in SIZES}


def test_panel_files(tmp_path, inputs):
    paths = attribution_panel(*inputs, tmp_path / "panel", title="img-0001")
    assert [path.name for path in paths] == ["panel.png", "panel.pdf"]
    png, pdf = (path.read_bytes() for path in paths)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and pdf[:5] == b"%PDF-" and pdf.rstrip().endswith(b"%%EOF")
    assert b"matplotlib" not in png.lower() and b"matplotlib" not in pdf.lower()  # no software metadata
    pixels = matplotlib.image.imread(paths[0])
    height, width = pixels.shape[:2]
    assert width == pytest.approx(PANEL_WIDTH_IN * 200, abs=2)  # 7 inches at dpi 200
    assert width < height < 1.6 * width  # 3 rows x 2 columns of square cells, plus labels and the footnote
    # The hot quadrants are coloured: saturated pixels exist and lie in the cells' top-left quarters mostly.
    colourful = saturation(pixels) > 0.3
    assert colourful.mean() > 0.02


def test_panel_layout_labels_and_fonts(inputs):
    figure = panel_figure(*inputs, title="img-0001")
    assert figure.get_figwidth() == PANEL_WIDTH_IN
    texts = [text for text in figure.findobj(Text) if text.get_text() and text.get_visible()]
    assert {"32 px", "64 px", "Gradient", "Grad-CAM", "XRAI (top 10%)", "img-0001"} <= {t.get_text() for t in texts}
    assert min(text.get_fontsize() for text in texts) >= 7
    cells = [ax for ax in figure.axes if ax.images]
    assert len(cells) == len(METHODS) * len(SIZES)
    assert all(len(ax.lines) >= 2 for ax in cells)  # two lung contours per cell
    assert len(figure.axes) - len(cells) == len(METHODS)  # one colour bar per row
    assert FONT_PT >= 7


def test_panel_without_lung_mask_or_map_says_so(inputs):
    radiographs, maps, masks = inputs
    maps = {key: value for key, value in maps.items() if key != ("xrai", 64)}
    figure = panel_figure(radiographs, maps, {**masks, 32: None})
    notes = [text.get_text() for ax in figure.axes for text in ax.texts]
    assert notes.count("no lung mask") == len(METHODS) and notes.count("map not computed") == 1
    assert all(not ax.lines for ax in figure.axes[:: len(SIZES) + 1][: len(METHODS)])  # 32 px column: no contour


def test_overlay_image_colours_the_hot_quadrant(tmp_path):
    """The saved PNG: saturated pixels only in the image's top-left quadrant (the colour bar is on the right)."""
    size = 64
    path = overlay_image(radiograph(size), hot_quadrant(size, "vanilla"), tmp_path / "one.png",
                         lung_mask=None, title="img-0002")
    pixels = matplotlib.image.imread(path)[..., :3]
    height, width = pixels.shape[:2]
    image_part = pixels[:, : int(width * 0.8)]  # left of the colour bar
    colourful = np.argwhere(saturation(image_part) > 0.3)
    assert colourful.size
    rows, cols = colourful[:, 0] / height, colourful[:, 1] / image_part.shape[1]
    assert np.mean((rows < 0.55) & (cols < 0.55)) > 0.95  # the hot quadrant, not the gray rest
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
