"""Attribution over trained runs: maps per image, size and method, in-lung attention, figure panels.

One call explains a fixed test sample (bnp_cxr.attribution.sample) with every trained run (one run
per image size), writes the maps as .npz, a per-image table of in-lung attention, and, once all
shards are in, the per method x size aggregate (in_lung.csv), its trend plot and the figure panels.
`shard=(I, N)` lets N machines split the sample; `merge` gives the table a single run would.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from bnp_cxr.attribution.methods import METHODS, MethodConfig
from bnp_cxr.attribution.names import AGGREGATE
from bnp_cxr.attribution.sample import SampleImage, choose_sample, load_sample, record_image_ids, shard_slice
from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.records.standardize import run_standardization
from bnp_cxr.workspace import RECORDS_DIR, RunDir

PER_IMAGE = "in_lung_per_image.csv"
SHARD_GLOB = "in_lung_per_image.shard-*-of-*.csv"
ID_COLUMNS = ("run", "size", "method", "target", "image_id", "patient_id", "positive", "true_log10_bnpp",
              "pred_log10_bnp", "pred_log10_bnpp", "lung_mask_source")


@dataclass(frozen=True)
class AttributionConfig:
    """What to explain and how; `shard` = (I, N) explains every N-th sampled image from I."""

    methods: tuple[str, ...] = METHODS
    target: str = "bnpp"
    n_images: int = 16
    split: str = "test"
    seed: int = 0
    top_fraction: float = 0.10
    method: MethodConfig = field(default_factory=MethodConfig)
    lung_model: str | None = None
    n_boot: int = 2000
    shard: tuple[int, int] = (0, 1)
    panels: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
        if self.n_images < 1:
            raise ValueError(f"the sample needs n >= 1 images, got {self.n_images}")
        if not 0.0 < self.top_fraction < 1.0:
            raise ValueError(f"top_fraction must be in (0, 1), got {self.top_fraction}")


@dataclass(frozen=True)
class RunInfo:
    """A trained run folder: its name, image size (px), records folder and the input standardisation it expects."""

    path: Path
    name: str
    size: int
    records_dir: Path
    standardize: str = "none"


def find_runs(runs_root: str | os.PathLike) -> list[Path]:
    """Run folders under runs_root holding model.keras and config.json, by name."""
    root = Path(runs_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of training runs (tools/train.py writes them)")
    return sorted(p for p in root.iterdir() if RunDir(p).is_trained())


def run_info(run_dir: str | os.PathLike, records_dir: str | os.PathLike | None = None) -> RunInfo:
    """Name, size and records folder of a run (records_dir overrides the run's config)."""
    from bnp_cxr.evaluation.evaluate import read_run_config

    config = read_run_config(run_dir)
    records = Path(records_dir or config.get("records_dir") or RECORDS_DIR)
    return RunInfo(Path(run_dir), Path(run_dir).name, int(config["size"]), records, run_standardization(config))


def check_sizes(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """Runs ordered by size; two runs at one size would make the per-size tables ambiguous."""
    by_size: dict[int, RunInfo] = {}
    for info in runs:
        if info.size in by_size:
            raise ValueError(f"runs {by_size[info.size].path} and {info.path} are both at {info.size} px; "
                             "pass the runs to compare one size at a time (--run)")
        by_size[info.size] = info
    if not by_size:
        raise ValueError("no trained runs to explain (train one with tools/train.py)")
    return [by_size[size] for size in sorted(by_size)]


def sample_ids(runs: Sequence[RunInfo], config: AttributionConfig) -> list[str]:
    """The whole sample (before sharding): images present in every run's split."""
    return choose_sample([record_image_ids(info.records_dir, config.split, info.size) for info in runs],
                         config.n_images, config.seed)


def runs_and_sample(runs: Sequence[RunInfo], config: AttributionConfig) -> tuple[list[RunInfo], list[str]]:
    """The runs ordered by size (check_sizes) and the sample's image IDs; ValueError when no image is in every run."""
    runs = check_sizes(runs)
    sampled = sample_ids(runs, config)
    if not sampled:
        raise ValueError(f"no {config.split} image is present in the records of every run")
    return runs, sampled


def map_path(out_dir: Path, info: RunInfo, image_id: str, method: str) -> Path:
    """Where one map is written: maps/{run}/{image_id}_{method}.npz (pseudonymous IDs only)."""
    return out_dir / "maps" / info.name / f"{image_id}_{method}.npz"


def lung_masks(images: Sequence[SampleImage], lung_model) -> tuple[list[np.ndarray | None], list[str]]:
    """Each image's lung mask and where it came from: the record, the lung model, or none."""
    masks: list[np.ndarray | None] = [image.lung_mask for image in images]
    sources = ["record" if mask is not None else "none" for mask in masks]
    missing = [i for i, mask in enumerate(masks) if mask is None]
    if missing and lung_model is not None:
        from bnp_cxr.lungs import predict_lung_masks

        predicted = predict_lung_masks(lung_model, np.stack([images[i].image for i in missing]))
        for i, mask in zip(missing, predicted):
            # The letterbox padding is not lung, whatever a model trained on unpadded images says.
            masks[i], sources[i] = mask & images[i].valid_mask(), "lung_model"
    return masks, sources


def image_rows(info: RunInfo, method: str, images: Sequence[SampleImage], maps: np.ndarray,
               predictions: np.ndarray, masks: Sequence[np.ndarray | None], sources: Sequence[str],
               config: AttributionConfig) -> list[dict]:
    """One table row per image: identifiers, prediction and in-lung attention of its map."""
    from bnp_cxr.attribution.inlung import component_fractions, in_lung_metrics

    rows = []
    for image, attribution, prediction, mask, source in zip(images, maps, predictions, masks, sources):
        row = {"run": info.name, "size": info.size, "method": method, "target": config.target,
               "image_id": image.image_id, "patient_id": image.patient_id, "positive": image.positive,
               "true_log10_bnpp": image.true_log10[1], "pred_log10_bnp": float(prediction[0]),
               "pred_log10_bnpp": float(prediction[1]), "lung_mask_source": source}
        valid = image.valid_mask()
        if mask is not None:
            row.update(in_lung_metrics(attribution, mask, valid=valid, top_fraction=config.top_fraction))
        if image.component_mask is not None:
            row.update(component_fractions(attribution, image.component_mask, valid=valid))
        rows.append(row)
    return rows


def save_map(path: Path, image: SampleImage, attribution: np.ndarray, mask: np.ndarray | None, source: str,
             method: str, config: AttributionConfig, prediction: np.ndarray) -> None:
    """One map with what is needed to redraw it: the radiograph (uint16), lung mask and content box."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".tmp.npz") as temp:  # never a half-written map under the final name
        np.savez_compressed(
            temp, attribution=attribution.astype(np.float32), method=method, target=config.target,
            image_id=image.image_id, size=image.size,
            radiograph=np.rint(image.image[..., 0] * 65535).astype(np.uint16),
            lung_mask=mask if mask is not None else np.zeros((0, 0), bool), lung_mask_source=source,
            content_box=np.asarray(image.content_box), pred_log10_bnp_bnpp=np.asarray(prediction, np.float32))


def explain_run(info: RunInfo, image_ids: Sequence[str], out_dir: Path, config: AttributionConfig,
                lung_model=None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Maps and table rows of one run for the given images, every method."""
    import keras

    from bnp_cxr.attribution.callbacks import ModelGradients
    from bnp_cxr.attribution.methods import attribution_maps
    from bnp_cxr.evaluation.evaluate import load_run_model

    model = load_run_model(RunDir(info.path).model)
    gradients = ModelGradients(model, config.target, config.method.conv_layer)
    images = load_sample(info.records_dir, config.split, info.size, image_ids, standardize=info.standardize)
    batch = np.stack([image.image for image in images])
    predictions = keras.ops.convert_to_numpy(model.predict(batch, verbose=0, batch_size=config.method.batch_size))
    masks, sources = lung_masks(images, lung_model)
    rows = []
    for method in config.methods:
        maps = attribution_maps(model, batch, method, target=config.target, config=config.method,
                                gradients=gradients)
        for image, attribution, mask, source, prediction in zip(images, maps, masks, sources, predictions):
            save_map(map_path(out_dir, info, image.image_id, method), image, attribution, mask, source, method,
                     config, prediction)
        rows += image_rows(info, method, images, maps, predictions, masks, sources, config)
        if progress:
            progress(len(images))
    return rows


def per_image_name(shard: tuple[int, int]) -> str:
    """The per-image table's file name: plain for a whole run, .shard-I-of-N for a shard."""
    index, count = shard
    return PER_IMAGE if count == 1 else f"in_lung_per_image.shard-{index}-of-{count}.csv"


def attribute(runs: Sequence[RunInfo], out_dir: str | os.PathLike, config: AttributionConfig = AttributionConfig(),
              *, progress: bool = True) -> dict:
    """Explain the sample (or this shard of it) with every run; finalize unless sharded. Returns a summary."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, sampled = runs_and_sample(runs, config)
    mine = shard_slice(sampled, config.shard)
    lung_model = None
    if config.lung_model:
        from bnp_cxr.lungs import load_lung_model

        lung_model = load_lung_model(config.lung_model)
    rows: list[dict] = []
    with tqdm(total=len(mine) * len(runs) * len(config.methods), unit="map", disable=not progress or not mine,
              desc="attribution") as bar:
        for info in runs:
            if mine:
                rows += explain_run(info, mine, out, config, lung_model, progress=bar.update)
    table = pd.DataFrame(rows)
    write_csv(table, out / per_image_name(config.shard))
    write_json(out / f"settings.shard-{config.shard[0]}-of-{config.shard[1]}.json", {
        "runs": [{"name": i.name, "size": i.size} for i in runs], "sample": sampled, "shard": list(config.shard),
        "config": _jsonable(config)})
    summary = {"images": len(mine), "sample": len(sampled), "runs": [i.name for i in runs], "maps": len(rows)}
    if config.shard[1] == 1:
        summary.update(finalize(out, config, table))
    return summary


def merge(out_dir: str | os.PathLike, config: AttributionConfig | None = None) -> dict:
    """Combine the per-shard tables of a sharded attribution into the single-run outputs."""
    out = Path(out_dir)
    settings = sorted(out.glob("settings.shard-*-of-*.json"))
    if not settings:
        raise FileNotFoundError(f"no shard settings in {out}: run tools/attribute.py --shard I/N first")
    documents = [json.loads(path.read_text()) for path in settings]
    counts = {doc["shard"][1] for doc in documents}
    if len(counts) != 1 or counts == {1}:
        raise ValueError(f"{out} holds shards of different splits ({sorted(counts)}); use one output folder per N")
    count = counts.pop()
    present = {doc["shard"][0] for doc in documents}
    missing = sorted(set(range(count)) - present)
    if missing:
        raise ValueError(f"shards {missing} of {count} have not finished in {out}")
    if len({json.dumps(doc["sample"]) for doc in documents}) != 1:
        raise ValueError("the shards explained different samples (different runs, --n or --seed)")
    tables = [pd.read_csv(out / per_image_name((index, count))) for index in range(count)]
    table = pd.concat([t for t in tables if len(t)], ignore_index=True)
    config = config or AttributionConfig(**_config_from(documents[0]["config"]))
    return {"images": len(documents[0]["sample"]), "maps": len(table), **finalize(out, config, table)}


def finalize(out: Path, config: AttributionConfig, table: pd.DataFrame) -> dict:
    """Aggregate table, trend plot and panels from the per-image table and the saved maps."""
    from bnp_cxr.attribution.inlung import aggregate_in_lung, plot_in_lung_trend

    table = order_rows(table, config)
    write_csv(table, out / PER_IMAGE)
    with_lungs = table.dropna(subset=["mass_in_lung_fraction"]) if "mass_in_lung_fraction" in table else table[:0]
    written = {"per_image": str(out / PER_IMAGE)}
    if len(with_lungs):
        aggregate = aggregate_in_lung(with_lungs, n_boot=config.n_boot, seed=config.seed)
        write_csv(aggregate, out / AGGREGATE)
        plot_in_lung_trend(aggregate, out / "in_lung_trend.png")
        written["aggregate"] = str(out / AGGREGATE)
    if config.panels:
        written["panels"] = [str(p) for p in draw_panels(out, table, config)]
    return written


def order_rows(table: pd.DataFrame, config: AttributionConfig) -> pd.DataFrame:
    """Rows in a fixed order (size, method as configured, image) so shards merge to the same bytes."""
    method_rank = {m: i for i, m in enumerate(config.methods)}
    return table.sort_values(["size", "method", "image_id"], key=lambda c: c.map(method_rank)
                             if c.name == "method" else c, kind="stable").reset_index(drop=True)


def draw_panels(out: Path, table: pd.DataFrame, config: AttributionConfig) -> list[Path]:
    """One panel per sampled image: sizes as columns, methods as rows, from the saved maps.

    Panels are independent and matplotlib draws on one core, so they are drawn across the cores
    (spawned processes, started once for all panels) when there are several.
    """
    from bnp_cxr.attribution.panels import SavedPanel, draw_saved_panel
    from bnp_cxr.records.pool import ordered_map

    runs = table[["run", "size"]].drop_duplicates().sort_values("size")
    target = "log10 BNPP" if config.target == "bnpp" else "log10 BNP"
    jobs = [SavedPanel(maps=tuple((method, int(size), str(out / "maps" / run / f"{image_id}_{method}.npz"))
                                  for run, size in runs.itertuples(index=False) for method in config.methods),
                       out_stem=str(out / "panels" / image_id), methods=tuple(config.methods),
                       xrai_top_fraction=config.top_fraction, title=f"{image_id}: {target}")
            for image_id in table["image_id"].drop_duplicates()]
    workers = min(len(jobs), os.cpu_count() or 1) if len(jobs) > 2 else 0
    return [path for paths in ordered_map(draw_saved_panel, jobs, workers) for path in paths]


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Write a table atomically (tmp + rename)."""
    with atomic_path(path) as temp:
        table.to_csv(temp, index=False, float_format="%.6g")


def _jsonable(config: AttributionConfig) -> dict:
    document = asdict(config)
    document["shard"] = list(config.shard)
    return document


def _config_from(document: dict) -> dict:
    fields = dict(document)
    fields["method"] = MethodConfig(**fields["method"])
    fields["methods"] = tuple(fields["methods"])
    fields["shard"] = (0, 1)
    return fields
