"""Figure panels like Huynh et al. (MIDL 2022): one radiograph across sizes (columns) x methods (rows).

Each cell is the grayscale radiograph with the attribution blended over it (opacity grows with the
value, so cold pixels leave the radiograph visible), the lung contour as a thin cyan line, and for
XRAI only its top-k% regions (the rest dimmed), the way the XRAI authors show it (Kapishnikov et al.,
ICCV 2019; PAIR saliency's example notebook keeps pixels >= the (1 - k) quantile, so whole regions
stay whole). Scales: vanilla gradients per cell to their 99.5th percentile (a few extreme gradients
would otherwise leave the rest invisible), Grad-CAM as produced ([0, 1], ReLU then / max), XRAI per
cell from its top-k threshold to its maximum. Figures are drawn on matplotlib.figure.Figure (no
pyplot state) and saved without the software / date metadata matplotlib adds by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from skimage.measure import find_contours

from bnp_cxr.attribution.inlung import METHOD_LABELS, NO_METADATA

# inferno (black -> purple -> yellow) holds no cyan, the lung contour's colour, and no gray; it stops at
# 0.9, before its near-white end, which blended over bright bone would barely differ from the radiograph.
CMAP = ListedColormap(colormaps["inferno"](np.linspace(0.0, 0.9, 256)), name="inferno_to_yellow")
# XRAI tints whole regions: starting at purple keeps its lowest kept region from looking like shadow.
XRAI_CMAP = ListedColormap(colormaps["inferno"](np.linspace(0.3, 0.9, 256)), name="inferno_purple_to_yellow")
MAX_ALPHA = 0.75  # opacity of the hottest pixel; the radiograph stays faintly visible beneath
XRAI_ALPHA = 0.45  # XRAI's kept regions are tinted evenly: their extent is the message, not a gradient
XRAI_DIM = 0.4  # brightness left outside XRAI's top regions
VANILLA_PERCENTILE = 99.5
CONTOUR = {"color": "cyan", "lw": 0.6}
FONT_PT = 7.5  # the footnote is 7 pt; >= 7 pt at a 7-inch figure width: readable when printed at one page width
PANEL_WIDTH_IN = 7.0


@dataclass(frozen=True)
class Overlay:
    """A rendered cell: RGB [H, W, 3] in [0, 1] and what its colours mean (for the colour bar)."""

    rgb: np.ndarray
    scale_label: str


def scale_label(method: str, xrai_top_fraction: float = 0.10) -> str:
    """What a method's colour scale shows, short enough for a colour bar one cell high (SCALE_NOTE spells it out)."""
    return {"vanilla": f"|grad| / p{VANILLA_PERCENTILE:g}", "gradcam": "Grad-CAM",
            "xrai": "threshold → max"}.get(method, "attribution / max")


def scale_note(methods: Sequence[str], xrai_top_fraction: float = 0.10) -> str:
    """The figure's footnote: each row's colour scale in full, and the contour."""
    notes = {"vanilla": f"Gradient: |gradient| per cell / its {VANILLA_PERCENTILE:g}th percentile",
             "gradcam": "Grad-CAM: ReLU, / max",
             "xrai": f"XRAI: its top {xrai_top_fraction:.0%} regions (rest dimmed), cell threshold → max"}
    return "; ".join([notes.get(method, f"{method}: positive part / max") for method in methods]
                     + ["cyan: lung contour"]) + "."


def normalised(attribution: np.ndarray, method: str, xrai_top_fraction: float = 0.10) -> tuple[np.ndarray, np.ndarray]:
    """(values in [0, 1], shown mask): the cell's colour values and which pixels carry colour."""
    values = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    if method == "gradcam":
        return np.clip(values, 0, 1), np.ones(values.shape, bool)
    if method == "xrai":
        threshold = np.quantile(values, 1 - xrai_top_fraction)
        kept = values >= threshold
        span = values.max() - threshold
        scaled = (values - threshold) / span if span > 0 else np.ones_like(values)
        return np.clip(scaled, 0, 1) * kept, kept
    values = np.abs(values) if method == "vanilla" else np.maximum(values, 0)
    top = np.percentile(values, VANILLA_PERCENTILE) if method == "vanilla" else values.max()
    top = top if top > 0 else values.max()
    return (np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values)), np.ones(values.shape, bool)


def overlay_rgb(radiograph: np.ndarray, attribution: np.ndarray, method: str = "vanilla", *,
                xrai_top_fraction: float = 0.10) -> Overlay:
    """The radiograph in gray with the map blended over it (module docstring); RGB [H, W, 3] in [0, 1]."""
    gray = np.clip(np.asarray(radiograph, dtype=np.float64), 0, 1)
    if gray.ndim == 3 and gray.shape[-1] == 1:
        gray = gray[..., 0]
    if np.shape(attribution) != gray.shape:
        raise ValueError(f"map shape {np.shape(attribution)} differs from the radiograph's {gray.shape}")
    values, shown = normalised(attribution, method, xrai_top_fraction)
    base = np.repeat(gray[..., None], 3, axis=-1)
    colour = (XRAI_CMAP if method == "xrai" else CMAP)(values)[..., :3]
    if method == "xrai":
        alpha = np.where(shown, XRAI_ALPHA, 0.0)[..., None]
        base = np.where(shown[..., None], base, base * XRAI_DIM)
    else:
        alpha = (MAX_ALPHA * values)[..., None]
    return Overlay(base * (1 - alpha) + colour * alpha, scale_label(method, xrai_top_fraction))


def _draw_cell(ax, radiograph: np.ndarray, attribution: np.ndarray | None, lung_mask: np.ndarray | None,
               method: str, xrai_top_fraction: float) -> None:
    if attribution is None:
        ax.imshow(np.clip(radiograph, 0, 1), cmap="gray", vmin=0, vmax=1)
        _note(ax, "map not computed")
    else:
        ax.imshow(overlay_rgb(radiograph, attribution, method, xrai_top_fraction=xrai_top_fraction).rgb)
    if lung_mask is None:
        _note(ax, "no lung mask", top=True)
    else:
        for contour in find_contours(np.asarray(lung_mask, dtype=np.float64), 0.5):
            ax.plot(contour[:, 1], contour[:, 0], **CONTOUR)
    ax.set_xticks([])
    ax.set_yticks([])


def _note(ax, text: str, top: bool = False) -> None:
    ax.text(0.03, 0.97 if top else 0.03, text, transform=ax.transAxes, fontsize=FONT_PT - 0.5,
            va="top" if top else "bottom", ha="left", color="black",
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1.5})


def _colorbar(figure: Figure, cax, method: str, label: str) -> None:
    bar = figure.colorbar(ScalarMappable(Normalize(0, 1), XRAI_CMAP if method == "xrai" else CMAP), cax=cax)
    bar.set_ticks([0, 0.5, 1])
    bar.ax.tick_params(labelsize=FONT_PT, length=2)
    bar.set_label(label, fontsize=FONT_PT)


def method_title(method: str, xrai_top_fraction: float = 0.10) -> str:
    """Row label: 'Gradient', 'Grad-CAM', 'XRAI (top 10%)'."""
    label = METHOD_LABELS.get(method, method)
    return f"{label} (top {xrai_top_fraction:.0%})" if method == "xrai" else label


def panel_figure(radiographs: Mapping[int, np.ndarray], maps: Mapping[tuple[str, int], np.ndarray],
                 lung_masks: Mapping[int, np.ndarray | None], *,
                 methods: Sequence[str] = ("vanilla", "gradcam", "xrai"), xrai_top_fraction: float = 0.10,
                 title: str = "", dpi: int = 200) -> Figure:
    """The sizes x methods panel as a Figure, PANEL_WIDTH_IN wide (attribution_panel saves it)."""
    sizes = sorted(int(size) for size in radiographs)
    if not sizes or not methods:
        raise ValueError("need at least one radiograph size and one method")
    n_rows, n_cols = len(methods), len(sizes)
    cell_in = (PANEL_WIDTH_IN - 1.6) / n_cols  # room for row labels and the colour bars
    figure = Figure(figsize=(PANEL_WIDTH_IN, n_rows * cell_in + (1.0 if title else 0.7)), dpi=dpi,
                    layout="constrained")
    grid = figure.add_gridspec(n_rows, n_cols + 1, width_ratios=[1] * n_cols + [0.06])
    for row, method in enumerate(methods):
        for col, size in enumerate(sizes):
            ax = figure.add_subplot(grid[row, col])
            radiograph = np.asarray(radiographs[size], dtype=np.float64).squeeze()
            _draw_cell(ax, radiograph, maps.get((method, size)), lung_masks.get(size), method, xrai_top_fraction)
            if row == 0:
                ax.set_title(f"{size} px", fontsize=FONT_PT + 1)
            if col == 0:
                ax.set_ylabel(method_title(method, xrai_top_fraction), fontsize=FONT_PT + 1)
        _colorbar(figure, figure.add_subplot(grid[row, n_cols]), method, scale_label(method, xrai_top_fraction))
    if title:
        figure.suptitle(title, fontsize=FONT_PT + 1.5)
    figure.supxlabel(scale_note(methods, xrai_top_fraction), fontsize=FONT_PT - 0.5, wrap=True)
    return figure


def save(figure: Figure, paths: Sequence[Path]) -> list[Path]:
    """Write the figure to each path (format from the suffix) without matplotlib's metadata."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, metadata=NO_METADATA[path.suffix], pad_inches=0.04)
    return list(paths)


def attribution_panel(radiographs: Mapping[int, np.ndarray], maps: Mapping[tuple[str, int], np.ndarray],
                      lung_masks: Mapping[int, np.ndarray | None], out_stem: str | Path, *,
                      methods: Sequence[str] = ("vanilla", "gradcam", "xrai"), xrai_top_fraction: float = 0.10,
                      title: str = "", dpi: int = 200) -> list[Path]:
    """out_stem.png and out_stem.pdf: the panel_figure of one radiograph. Titles: pseudonymous IDs only."""
    figure = panel_figure(radiographs, maps, lung_masks, methods=methods, xrai_top_fraction=xrai_top_fraction,
                          title=title, dpi=dpi)
    stem = Path(out_stem)
    return save(figure, [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")])


@dataclass(frozen=True)
class SavedPanel:
    """One panel to draw from saved maps: (method, size px, .npz path) per cell; a missing file is a blank cell."""

    maps: tuple[tuple[str, int, str], ...]
    out_stem: str
    methods: tuple[str, ...]
    xrai_top_fraction: float
    title: str


def draw_saved_panel(job: SavedPanel) -> list[Path]:
    """attribution_panel of one image from its saved .npz maps (attribution, radiograph uint16, lung_mask)."""
    radiographs, maps, masks = {}, {}, {}
    for method, size, path in job.maps:
        if not Path(path).is_file():
            continue
        with np.load(path) as saved:
            maps[(method, size)] = saved["attribution"]
            radiographs[size] = saved["radiograph"].astype(np.float32) / 65535
            masks[size] = saved["lung_mask"] if saved["lung_mask"].size else None
    return attribution_panel(radiographs, maps, masks, job.out_stem, methods=job.methods,
                             xrai_top_fraction=job.xrai_top_fraction, title=job.title)


def overlay_image(radiograph: np.ndarray, attribution: np.ndarray, path: str | Path, *,
                  lung_mask: np.ndarray | None = None, method: str = "vanilla", title: str = "",
                  xrai_top_fraction: float = 0.10, dpi: int = 200) -> Path:
    """One overlay cell with its colour bar as a PNG (tools/predict.py)."""
    figure = Figure(figsize=(3.6, 3.3 if title else 3.1), dpi=dpi, layout="constrained")
    grid = figure.add_gridspec(1, 2, width_ratios=[1, 0.05])
    ax = figure.add_subplot(grid[0, 0])
    radiograph = np.asarray(radiograph, dtype=np.float64).squeeze()
    _draw_cell(ax, radiograph, attribution, lung_mask, method, xrai_top_fraction)
    ax.set_xlabel(scale_note([method], xrai_top_fraction), fontsize=FONT_PT - 0.5, wrap=True)
    _colorbar(figure, figure.add_subplot(grid[0, 1]), method, scale_label(method, xrai_top_fraction))
    if title:
        ax.set_title(title, fontsize=FONT_PT + 1)
    return save(figure, [Path(path)])[0]
