"""The attribution scorecard: per method and image size, how localised, faithful, model-sensitive and stable a map is.

Per image, method and run (one run per size), from the maps of bnp_cxr.attribution.methods (ALL_METHODS):
localisation (bnp_cxr.attribution.localisation: in-lung mass / top-k, pointing game, Otsu IoU, phantom truth
shares), faithfulness (bnp_cxr.attribution.faithfulness: deletion / insertion areas, ROAD), model sensitivity
(the mean Spearman rho of a map with the trained model's as bnp_cxr.attribution.sanity's cascading
randomisation replaces layer groups head first; lower = more dependent on what the model learned) and
max-sensitivity. Randomisation and stability run on the first `subset` images. Means over images come with
patient-bootstrap CIs (bnp_cxr.attribution.inlung.aggregate_in_lung, the evaluation's cluster resampling).
A method that cannot run on a model (Grad-CAM without a spatial layer, say) is listed as not applicable
with the reason; an image without a lung mask has empty (NaN) lung cells.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import keras
import numpy as np
import pandas as pd
import saliency.core as saliency
from scipy.stats import spearmanr

from bnp_cxr.attribution.callbacks import ModelGradients
from bnp_cxr.attribution.faithfulness import ROAD_FRACTIONS, deletion_insertion, max_sensitivity, road
from bnp_cxr.attribution.inlung import aggregate_in_lung
from bnp_cxr.attribution.library_methods import auto_ig_steps
from bnp_cxr.attribution.localisation import localisation_metrics
from bnp_cxr.attribution.methods import ALL_METHODS, MethodConfig, attribution_maps
from bnp_cxr.attribution.sanity import cascading_randomization, randomization_groups

# name -> (label, higher is better): the scorecard's columns, in order.
SCORE_METRICS = {
    "mass_in_lung_fraction": ("in-lung mass", True),
    "top_in_lung_fraction": ("in-lung top 10 %", True),
    "pointing_game": ("pointing game", True),
    "otsu_iou": ("Otsu IoU (lungs)", True),
    "truth_ratio": ("truth mass / area", True),
    "deletion_auc": ("deletion AUC", False),
    "insertion_auc": ("insertion AUC", True),
    "road_gap": ("ROAD LeRF - MoRF", True),
    "randomisation_spearman": ("randomisation rho", False),
    "max_sensitivity": ("max-sensitivity", False),
}
TRUTH_METRIC = "truth_ratio"
EXTRA_COLUMNS = ("lung_area_fraction", "road_morf", "road_lerf", "truth_mass_fraction", "truth_area_fraction")
COST_GROUPS = ("maps", "localisation", "deletion_insertion", "road", "randomisation", "stability")


@dataclass(frozen=True)
class ScorecardConfig:
    """What the scorecard explains and how (metric settings in bnp_cxr.attribution.faithfulness)."""

    methods: tuple[str, ...] = ALL_METHODS
    target: str = "bnpp"
    method: MethodConfig = field(default_factory=MethodConfig)
    top_fraction: float = 0.10
    curve_steps: int = 20
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS
    stability_radius: float = 0.02
    stability_samples: int = 3
    subset: int = 4  # images for randomisation and stability
    randomisation_steps: int | None = None  # layer groups randomised (None: all)
    n_boot: int = 1000
    seed: int = 0
    ig_steps_auto: bool = False  # per run: the fewest IG steps with a completeness gap < 1 % (library_methods)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; choose from {ALL_METHODS}")
        if self.subset < 0 or self.stability_samples < 1 or self.curve_steps < 2:
            raise ValueError("subset must be >= 0, stability_samples >= 1 and curve_steps >= 2")


@dataclass(frozen=True)
class ScoredImage:
    """One image as the scorecard needs it: pixels, masks, content box and pseudonymous IDs."""

    image_id: str
    patient_id: str
    image: np.ndarray  # float32 [H, W, 1] in [0, 1]
    lung_mask: np.ndarray | None
    component_mask: np.ndarray | None
    valid: np.ndarray  # bool [H, W]


class CallCounter:
    """Counts the batched model calls made through one ModelGradients (gradients, conv values, outputs)."""

    def __init__(self, gradients: ModelGradients):
        self.count = 0
        for name in ("input_gradients", "conv_gradients"):
            setattr(gradients, name, self._counted(getattr(gradients, name)))
        callback = gradients.call_model_function

        def call_model_function(x_batch, call_model_args=None, expected_keys=()):
            self.count += saliency.OUTPUT_LAYER_VALUES in (expected_keys or ())
            return callback(x_batch, call_model_args, expected_keys)

        gradients.call_model_function = call_model_function

    def _counted(self, function):
        def counted(*args, **kwargs):
            self.count += 1
            return function(*args, **kwargs)

        return counted


def forward_function(gradients: ModelGradients):
    """The explained output of a batch [B, H, W, 1] through the (counted) callback."""
    keys = [saliency.OUTPUT_LAYER_VALUES]
    return lambda batch: gradients.call_model_function(batch, expected_keys=keys)[saliency.OUTPUT_LAYER_VALUES]


def not_applicable_reason(model: keras.Model, method: str, gradients: ModelGradients) -> str | None:
    """Why `method` cannot explain `model` (None when it can): Grad-CAM needs a spatial feature map."""
    if method != "gradcam":
        return None
    try:
        layer = model.get_layer(gradients.conv_layer)
    except ValueError as error:
        return str(error)
    if isinstance(layer, keras.layers.InputLayer):
        return f"{model.name} has no spatial feature map below its head (Grad-CAM would read the input)"
    return None


def method_maps(model: keras.Model, batch: np.ndarray, config: ScorecardConfig, gradients: ModelGradients,
                counter: CallCounter) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, tuple[float, int]]]:
    """Maps of every method that runs ({method: [N, H, W]}), the reasons of those that do not, and their costs."""
    maps, not_applicable, costs = {}, {}, {}
    for method in config.methods:
        started, calls = time.perf_counter(), counter.count
        reason = not_applicable_reason(model, method, gradients)
        if reason:
            not_applicable[method] = reason
            continue
        try:
            maps[method] = attribution_maps(model, batch, method, target=config.target, config=config.method,
                                            gradients=gradients)
        except (ValueError, KeyError, TypeError) as error:
            not_applicable[method] = f"{type(error).__name__}: {error}"
            continue
        used = counter.count - calls
        if method == "xrai":  # its compiled sweep runs inside one tf.function: count its batches
            used = len(batch) * 2 * math.ceil(config.method.ig_steps / config.method.batch_size)
        costs[method] = (time.perf_counter() - started, used)
    return maps, not_applicable, costs


def _randomisation(model: keras.Model, images: Sequence[ScoredImage], methods: Sequence[str],
                   config: ScorecardConfig) -> dict[tuple[str, str], float]:
    """{(image_id, method): mean Spearman rho over the randomisation steps} for each image of the subset."""
    scores = {}
    for image in images:
        frame = cascading_randomization(model, image.image[None], methods, target=config.target,
                                        config=config.method, max_steps=config.randomisation_steps, seed=config.seed)
        steps = frame[frame["step"] > 0]
        for method, rows in steps.groupby("method"):
            scores[(image.image_id, method)] = float(rows["spearman"].mean())
    return scores


def _faithfulness(forward, image: ScoredImage, attribution: np.ndarray, config: ScorecardConfig,
                  clock: dict[str, list[float]], counter: CallCounter) -> dict[str, float]:
    row = {}
    for group, function, options in (
            ("deletion_insertion", deletion_insertion, {"steps": config.curve_steps}),
            ("road", road, {"fractions": config.road_fractions})):
        started, calls = time.perf_counter(), counter.count
        row.update(function(forward, image.image, attribution, batch_size=config.method.batch_size,
                            seed=config.seed, **options))
        clock[group][0] += time.perf_counter() - started
        clock[group][1] += counter.count - calls
    return row


def score_run(model: keras.Model, images: Sequence[ScoredImage], size: int,
              config: ScorecardConfig = ScorecardConfig()) -> tuple[list[dict], list[dict], list[dict]]:
    """(per-image rows, not-applicable methods with reasons, seconds and model calls per metric group) of one run."""
    gradients = ModelGradients(model, config.target, config.method.conv_layer)
    counter = CallCounter(gradients)
    batch = np.stack([image.image for image in images])
    auto_costs = []
    if config.ig_steps_auto:
        config, auto_costs = _choose_ig_steps(gradients, batch, size, config, counter)
    maps, not_applicable, map_costs = method_maps(model, batch, config, gradients, counter)
    forward = forward_function(gradients)
    clock = {group: [0.0, 0] for group in COST_GROUPS}
    clock["maps"] = [sum(cost[0] for cost in map_costs.values()), sum(cost[1] for cost in map_costs.values())]
    rows = []
    for method, method_batch in maps.items():
        for image, attribution in zip(images, method_batch):
            started = time.perf_counter()
            row = {"size": size, "method": method, "image_id": image.image_id, "patient_id": image.patient_id,
                   **localisation_metrics(attribution, image.lung_mask, image.component_mask, valid=image.valid,
                                          top_fraction=config.top_fraction)}
            clock["localisation"][0] += time.perf_counter() - started
            row.update(_faithfulness(forward, image, attribution, config, clock, counter))
            rows.append(row)
    subset = list(images[:config.subset])
    if subset and maps:
        _subset_metrics(model, subset, maps, map_costs, len(images), config, gradients, rows, clock)
    costs = [{"size": size, "metric": group, "seconds": clock[group][0], "model_calls": int(clock[group][1]),
              "images": len(subset) if group in ("randomisation", "stability") else len(images)}
             for group in COST_GROUPS] + auto_costs
    reasons = [{"size": size, "method": method, "reason": reason} for method, reason in not_applicable.items()]
    return rows, reasons, costs


def _choose_ig_steps(gradients: ModelGradients, batch: np.ndarray, size: int, config: ScorecardConfig,
                     counter: CallCounter) -> tuple[ScorecardConfig, list[dict]]:
    """The config with --ig-steps auto's choice (on the first `subset` images, at least one) and its cost row."""
    started, calls = time.perf_counter(), counter.count
    steps, gap = auto_ig_steps(gradients, batch[:max(config.subset, 1)], batch_size=config.method.batch_size)
    cost = {"size": size, "metric": "ig_steps_auto", "seconds": time.perf_counter() - started,
            "model_calls": counter.count - calls, "images": min(max(config.subset, 1), len(batch)),
            "ig_steps": steps, "completeness_gap": gap}
    return replace(config, method=replace(config.method, ig_steps=steps)), [cost]


def _subset_metrics(model, subset: Sequence[ScoredImage], maps: dict, map_costs: dict, n_images: int,
                    config: ScorecardConfig, gradients: ModelGradients, rows: list[dict], clock: dict) -> None:
    """Randomisation and max-sensitivity of the subset's maps, written into their rows."""
    started = time.perf_counter()
    randomised = _randomisation(model, subset, list(maps), config)
    clock["randomisation"][0] = time.perf_counter() - started
    n_steps = len(randomization_groups(model)[:config.randomisation_steps])
    # The same maps are drawn once per step plus the trained reference: calls per map times (steps + 1).
    clock["randomisation"][1] = sum(cost[1] for cost in map_costs.values()) * len(subset) * (n_steps + 1) // n_images
    by_key = {(row["image_id"], row["method"]): row for row in rows}
    for (image_id, method), value in randomised.items():
        by_key[(image_id, method)]["randomisation_spearman"] = value
    started = time.perf_counter()
    for method in maps:
        for number, image in enumerate(subset):
            def explain(batch, method=method):
                return attribution_maps(model, batch, method, target=config.target, config=config.method,
                                        gradients=gradients)

            by_key[(image.image_id, method)]["max_sensitivity"] = max_sensitivity(
                explain, image.image, radius=config.stability_radius, samples=config.stability_samples,
                seed=config.seed + number)
    clock["stability"][0] = time.perf_counter() - started
    clock["stability"][1] = sum(cost[1] for cost in map_costs.values()) * len(subset) * (
        config.stability_samples + 1) // n_images


def aggregate_scorecard(per_image: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method x size: mean of each metric with its patient-bootstrap 95 % CI (_lo, _hi) and count (_n)."""
    names = [name for name in (*SCORE_METRICS, *EXTRA_COLUMNS) if name in per_image]
    names += sorted(column for column in per_image if column.startswith("component_"))
    frame = per_image.copy()
    for name in names:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return aggregate_in_lung(frame, metrics=names, n_boot=n_boot, seed=seed)


def rank_agreement(aggregate: pd.DataFrame, truth: str = TRUTH_METRIC) -> pd.DataFrame:
    """Per size and metric: Spearman rho of the methods' ranking by the metric (best first) with the truth ranking."""
    rows = []
    for size, group in aggregate.groupby("size"):
        group = group[np.isfinite(group[truth])] if truth in group else group[:0]
        for name, (_, higher) in SCORE_METRICS.items():
            if name == truth or name not in group:
                continue
            usable = group[np.isfinite(group[name])]
            rho = math.nan
            if len(usable) >= 3 and np.ptp(usable[name]) > 0 and np.ptp(usable[truth]) > 0:
                rho = float(spearmanr(usable[truth], usable[name] if higher else -usable[name]).statistic)
            rows.append({"size": int(size), "metric": name, "spearman": rho, "n_methods": len(usable)})
    return pd.DataFrame(rows, columns=["size", "metric", "spearman", "n_methods"])
