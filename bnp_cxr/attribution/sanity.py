"""Model-randomisation sanity check of attribution maps (Adebayo et al., "Sanity checks for saliency maps", 2018).

The weights of a trained model are re-initialised layer group by layer group, from the head down
(cascading) or one group at a time (independent), and each method's maps of the same images are
compared with those of the trained model: Spearman rank correlation of |map| and SSIM of maps
min-max normalised to [0, 1]. A method whose maps depend on what the model learned must give
DIFFERENT maps for a randomised model (low similarity); Arun et al. (Radiology: AI 2021) report
that on chest radiographs several methods, XRAI among them, fail this test.

Groups: every layer with a kernel (Conv, Dense, depthwise/separable conv) is one step, together with
the normalisation layers (BatchNorm, LayerNorm) that normalise its output, i.e. those between it and
the next kernel layer in topological order. Normalisation layers are reset to their initialisers
(BatchNorm: gamma 1, beta 0, moving mean 0, moving variance 1): a fresh random conv under the trained
layer's moving statistics would be normalised by numbers that do not describe it. Layers whose
weights are not from initialisers (Normalization's adapted mean / variance) are data constants and
are left alone. The caller's model is never changed: a clone is randomised in place.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from bnp_cxr.attribution.callbacks import ModelGradients
from bnp_cxr.attribution.methods import ALL_METHODS, METHODS, MethodConfig, attribution_maps, check_images
from bnp_cxr.records.standardize import run_standardization
from bnp_cxr.workspace import RECORDS_DIR, RunDir

SANITY_COLUMNS = ("method", "step", "layer", "n_layers_randomized", "spearman", "spearman_std", "ssim", "ssim_std",
                  "n_images")
# Variable name -> the layer attributes that may hold its initialiser (Keras 3 names; depthwise convs keep
# their "kernel" under depthwise_initializer).
_INITIALIZER_ATTRIBUTES = {
    "kernel": ("kernel_initializer", "depthwise_initializer"),
    "depthwise_kernel": ("depthwise_initializer",),
    "pointwise_kernel": ("pointwise_initializer",),
}
PLOT_DPI = 150
SANITY_CSV, SANITY_PLOT = "sanity.csv", "sanity.png"  # per run, in OUT/<run name>/


def _initializer(layer: keras.layers.Layer, variable) -> keras.initializers.Initializer | None:
    name = variable.name.split("/")[-1]
    for attribute in _INITIALIZER_ATTRIBUTES.get(name, (f"{name}_initializer",)):
        found = getattr(layer, attribute, None)
        if found is not None:
            return found
    return None


def _is_randomizable(layer: keras.layers.Layer) -> bool:
    initializers = [_initializer(layer, variable) is not None for variable in layer.weights]
    if any(initializers) and not all(initializers):
        missing = [v.name for v, known in zip(layer.weights, initializers) if not known]
        raise ValueError(f"layer {layer.name!r}: no initialiser found for weights {missing}")
    return bool(initializers) and all(initializers)


def _has_kernel(layer: keras.layers.Layer) -> bool:
    return any(variable.name.split("/")[-1].endswith("kernel") for variable in layer.weights)


def randomization_groups(model: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """(name, layers) per randomisation step, head first: each kernel layer with the normalisation layers after it."""
    groups: list[tuple[str, list[keras.layers.Layer]]] = []
    pending: list[keras.layers.Layer] = []  # normalisation layers met (in reverse) before their kernel layer
    for layer in reversed(model.layers):  # a functional model lists its layers in topological order
        if not _is_randomizable(layer):
            continue
        if _has_kernel(layer):
            groups.append((layer.name, [layer, *reversed(pending)]))
            pending = []
        else:
            pending.append(layer)
    if pending:  # normalisation of the input, before any kernel layer
        groups.append((pending[-1].name, list(reversed(pending))))
    return groups


def reinitialize(layers: Sequence[keras.layers.Layer], seed: int) -> None:
    """Re-draw every weight of `layers` from its initialiser, in place, reproducibly from `seed`."""
    for layer_index, layer in enumerate(layers):
        for variable_index, variable in enumerate(layer.weights):
            initializer = _initializer(layer, variable)
            config = initializer.get_config()
            if "seed" in config:  # a per-variable seed: the same draw whatever else is randomised
                state = np.random.SeedSequence([seed, layer_index, variable_index]).generate_state(1)[0]
                initializer = initializer.__class__.from_config({**config, "seed": int(state % 2**31)})
            variable.assign(initializer(shape=variable.shape, dtype=variable.dtype))


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, span = values.min(), np.ptp(values)
    return (values - low) / span if span > 0 else np.zeros_like(values)


def map_similarity(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(Spearman rho of |maps|, SSIM of |maps| min-max scaled to [0, 1]) of two [H, W] maps; rho NaN if one is flat."""
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(f"maps must be two [H, W] arrays of one shape, got {reference.shape} and {other.shape}")
    first, second = np.abs(reference).astype(np.float64), np.abs(other).astype(np.float64)
    flat = np.ptp(first) == 0 or np.ptp(second) == 0  # a rank correlation of a constant is undefined
    rho = float("nan") if flat else float(spearmanr(first.ravel(), second.ravel()).statistic)
    ssim = float(structural_similarity(_unit_range(first), _unit_range(second), data_range=1.0))
    return rho, ssim


def _clone(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _summary(method: str, step: int, layer: str, n_layers: int, reference: np.ndarray, maps: np.ndarray) -> dict:
    scores = np.array([map_similarity(a, b) for a, b in zip(reference, maps)])
    with warnings.catch_warnings():  # every rho undefined (all maps flat) -> NaN, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"method": method, "step": step, "layer": layer, "n_layers_randomized": n_layers,
                "spearman": np.nanmean(scores[:, 0]), "spearman_std": np.nanstd(scores[:, 0]),
                "ssim": scores[:, 1].mean(), "ssim_std": scores[:, 1].std(),
                "n_images": int(np.isfinite(scores[:, 0]).sum())}


def _randomization(model: keras.Model, images: np.ndarray, methods: Sequence[str], target: str,
                   config: MethodConfig, max_steps: int | None, seed: int, cascading: bool) -> pd.DataFrame:
    unknown = [method for method in methods if method not in ALL_METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {ALL_METHODS}, got {list(methods)}")
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0 or None, got {max_steps}")
    images = check_images(model, images)
    clone = _clone(model)
    trained = clone.get_weights()
    # One set of compiled functions for every step: they read the clone's variables, which change in place.
    gradients = ModelGradients(clone, target, config.conv_layer)

    def maps() -> dict[str, np.ndarray]:
        return {method: attribution_maps(clone, images, method, target=target, config=config, gradients=gradients)
                for method in methods}

    reference = maps()
    # One block of rows per method, in the order asked for, each ordered by step.
    rows = {method: [_summary(method, 0, "", 0, reference[method], reference[method])] for method in methods}
    n_layers = 0
    for step, (_, layers) in enumerate(randomization_groups(clone)[:max_steps], start=1):
        if not cascading:
            clone.set_weights(trained)
        reinitialize(layers, seed + step)
        n_layers = n_layers + len(layers) if cascading else len(layers)
        label = "+".join(layer.name for layer in layers)
        for method, current in maps().items():
            rows[method].append(_summary(method, step, label, n_layers, reference[method], current))
    return pd.DataFrame([row for method in methods for row in rows[method]], columns=list(SANITY_COLUMNS))


def cascading_randomization(model: keras.Model, images: np.ndarray, methods: Sequence[str] = METHODS, *,
                            target: str = "bnpp", config: MethodConfig = MethodConfig(),
                            max_steps: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Similarity of maps to the trained model's as layer groups are randomised head-first, cumulatively (Adebayo)."""
    return _randomization(model, images, methods, target, config, max_steps, seed, cascading=True)


def independent_randomization(model: keras.Model, images: np.ndarray, methods: Sequence[str] = METHODS, *,
                              target: str = "bnpp", config: MethodConfig = MethodConfig(),
                              max_steps: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Like cascading_randomization, but each step randomises only its own layer group (the rest stay trained)."""
    return _randomization(model, images, methods, target, config, max_steps, seed, cascading=False)


def plot_sanity(frame: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Spearman and SSIM against the randomisation step, one line per method, as a PNG at `path`."""
    missing = set(SANITY_COLUMNS) - set(frame.columns)
    if missing or frame.empty:
        raise ValueError(f"not a sanity frame: missing columns {sorted(missing)}" if missing else "empty sanity frame")
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    steps = frame.drop_duplicates("step").sort_values("step")
    labels = ["trained" if step == 0 else layer for step, layer in zip(steps["step"], steps["layer"])]
    for ax, metric, label in zip(axes, ("spearman", "ssim"), ("Spearman rank correlation of |map|", "SSIM")):
        for method, rows in frame.groupby("method", sort=False):
            rows = rows.sort_values("step")
            ax.errorbar(rows["step"], rows[metric], yerr=rows[f"{metric}_std"], marker="o", ms=4, capsize=2,
                        label=method)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set(ylabel=label, ylim=(-1.05 if metric == "spearman" else -0.05, 1.05),
               xlabel="layer group randomised at this step (head first)")
        ax.set_xticks(steps["step"], labels, rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(title="method")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def first_images(records_dir: str | os.PathLike, split: str, size: int, n: int, standardize: str = "none"
                 ) -> tuple[np.ndarray, list[str]]:
    """The first n images of a split in deterministic record order: (float32 [n, size, size, 1], image_ids)."""
    from bnp_cxr.records.reader import make_dataset

    images, ids = [], []
    for batch, _, meta in make_dataset(records_dir, split, size, batch_size=n, deterministic=True, with_metadata=True,
                                       standardize=standardize):
        images.append(batch.numpy())
        ids += [value.decode() for value in meta["image_id"].numpy()]
        if len(ids) >= n:
            break
    if not ids:
        raise ValueError(f"no {split} images at {size} px in {records_dir}")
    return np.concatenate(images)[:n], ids[:n]


def check_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, methods: Sequence[str] = METHODS, *,
              records_dir: str | os.PathLike | None = None, split: str = "test", n_images: int = 8,
              target: str = "bnpp", config: MethodConfig = MethodConfig(), max_steps: int | None = None,
              seed: int = 0) -> tuple[pd.DataFrame, Path, str]:
    """Cascading randomisation of a run on its split's first n images; writes sanity.csv and sanity.png.

    Returns the frame, the folder written (out_dir/<run name>) and the plot's title.
    """
    from bnp_cxr.evaluation.evaluate import load_run_model, read_run_config

    run = RunDir(run_dir)
    run_config = read_run_config(run.path)
    records = Path(records_dir or run_config.get("records_dir") or RECORDS_DIR)
    if not run.model.is_file():
        raise FileNotFoundError(f"{run.model} not found: train the run first (tools/train.py)")
    images, ids = first_images(records, split, int(run_config["size"]), n_images, run_standardization(run_config))
    frame = cascading_randomization(load_run_model(run.model), images, methods, target=target, config=config,
                                    max_steps=max_steps, seed=seed)
    out = Path(out_dir) / run.path.name
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / SANITY_CSV, index=False, float_format="%.4f")
    title = (f"{run.path.name}: {run_config.get('backbone', '?')} {run_config['size']} px, {len(ids)} {split} "
             f"images, target {target}")
    plot_sanity(frame, out / SANITY_PLOT, title=title)
    return frame, out, title
