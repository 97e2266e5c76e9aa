"""Resolution study: one model per image size, each evaluated on the test split, summarised as a table and a plot.

Huynh et al. (MIDL 2022) trained one model per input size from 64 to 1024 px and reported similar
AUCs, with diminishing but positive gains as the size grows. `run_study` repeats that design with the
training loop (bnp_cxr.training) and evaluation (bnp_cxr.evaluation.evaluate) of this package; the report
functions (`markdown_table`, `csv_rows`, `plot_study`, `write_report`) are pure functions over a list
of per-size metrics.json dicts, so a later study can add columns through `extra` ({size: {column:
value}}, a value being text, a number or a metric entry {estimate, ci_low, ci_high}).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from bnp_cxr.workspace import COHORT_DIR, SPLITS, RunDir

if TYPE_CHECKING:  # the report functions run without TensorFlow; training is imported where it is used
    from bnp_cxr.training.config import TrainConfig

Extra = Mapping[int, Mapping[str, Any]]
# (metrics.json key, markdown header, plot panel): the paper's headline numbers.
TABLE_METRICS = (
    ("auc_combined", "AUC combined [95% CI]", "AUC"),
    ("auc_bnpp_gt_400", "AUC BNPP>400 [95% CI]", "AUC"),
    ("pearson_r_log10_bnpp", "r log10 BNPP [95% CI]", "Pearson r, log10 BNPP"),
    ("mae_log10_bnpp", "MAE log10 BNPP [95% CI]", "MAE, log10 BNPP (log10 pg/mL)"),
)
PLOT_STYLE = {"auc_combined": ("#2e8b57", "o", "combined (BNPP>400 or BNP>100)"),
              "auc_bnpp_gt_400": ("#1f5fa8", "s", "BNPP > 400 pg/mL"),
              "pearson_r_log10_bnpp": ("#1f5fa8", "o", None), "mae_log10_bnpp": ("#1f5fa8", "o", None)}
PAST_TENSE = {"train": "trained", "resume": "resumed", "evaluate": "evaluated", "reuse": "reused"}
OUTPUT_FILES = {"markdown": "resolution.md", "csv": "resolution.csv", "plot": "resolution.png"}


# ---------------------------------------------------------------- report: pure functions over metric dicts

def format_entry(entry: Any, digits: int = 3) -> str:
    """'0.912 [0.801, 0.980]' for a metric entry, 'n/a' when undefined; text and numbers as themselves."""
    if not isinstance(entry, Mapping):
        return f"{entry:.{digits}f}" if isinstance(entry, float) else str(entry)
    if entry.get("estimate") is None:
        return "n/a"
    bounds = [entry.get(key) for key in ("ci_low", "ci_high")]
    ci = "n/a" if None in bounds else f"{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}"
    return f"{entry['estimate']:.{digits}f} [{ci}]"


def _sorted(results: Sequence[Mapping]) -> list[Mapping]:
    return sorted(results, key=lambda result: int(result["size"]))


def _extra_names(results: Sequence[Mapping], extra: Extra | None) -> list[str]:
    names: list[str] = []
    for result in _sorted(results):
        names += [name for name in (extra or {}).get(int(result["size"]), {}) if name not in names]
    return names


def markdown_table(results: Sequence[Mapping], extra: Extra | None = None, caption: str = "") -> str:
    """A paper-style markdown table, one row per size (ascending), extra columns after the standard ones."""
    names = _extra_names(results, extra)
    header = ["Size (px)", "Test images (patients)", *(title for _, title, _ in TABLE_METRICS), *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for result in _sorted(results):
        added = (extra or {}).get(int(result["size"]), {})
        cells = [str(result["size"]), f"{result['n_images']} ({result['n_patients']})",
                 *(format_entry(result["metrics"][key]) for key, _, _ in TABLE_METRICS),
                 *(format_entry(added[name]) if name in added else "" for name in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{caption}" if caption else "") + "\n"


def csv_rows(results: Sequence[Mapping], extra: Extra | None = None) -> list[dict[str, Any]]:
    """One flat row per size: every metric's estimate, CI and n, then the extra columns (entries split alike)."""
    rows = []
    names = _extra_names(results, extra)
    for result in _sorted(results):
        row: dict[str, Any] = {"size": int(result["size"]), "n_images": result["n_images"],
                               "n_patients": result["n_patients"]}
        for key, entry in result["metrics"].items():
            row.update({key: entry["estimate"], f"{key}_ci_low": entry["ci_low"], f"{key}_ci_high": entry["ci_high"],
                        f"{key}_n": entry["n"]})
        added = (extra or {}).get(int(result["size"]), {})
        for name in names:
            value = added.get(name)
            if isinstance(value, Mapping):
                row.update({name: value.get("estimate"), f"{name}_ci_low": value.get("ci_low"),
                            f"{name}_ci_high": value.get("ci_high")})
            else:
                row[name] = value
        rows.append(row)
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Rows as CSV, columns in first-seen order; undefined values as empty cells."""
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def plot_study(results: Sequence[Mapping], path: str | Path, subtitle: str = "") -> None:
    """AUCs, Pearson r and MAE vs size with 95% CI error bars on a log2 size axis; saved as PNG."""
    from matplotlib.figure import Figure

    results = _sorted(results)
    sizes = [int(result["size"]) for result in results]
    panels = list(dict.fromkeys(panel for _, _, panel in TABLE_METRICS))
    figure = Figure(figsize=(4.2 * len(panels), 4.4), dpi=150, layout="constrained")
    axes = dict(zip(panels, figure.subplots(1, len(panels))))
    for key, _, panel in TABLE_METRICS:
        ax = axes[panel]
        color, marker, label = PLOT_STYLE[key]
        shared = [k for k, _, p in TABLE_METRICS if p == panel]
        # Metrics sharing a panel are dodged by a few percent of a doubling so their error bars stay apart.
        dodge = 2 ** (0.06 * (shared.index(key) - (len(shared) - 1) / 2))
        x, y, low, high = [], [], [], []
        for size, result in zip(sizes, results):
            entry = result["metrics"][key]
            if entry["estimate"] is None:  # undefined (one class only): no point rather than a fake one
                continue
            x.append(size * dodge)
            y.append(entry["estimate"])
            low.append(y[-1] - (y[-1] if entry["ci_low"] is None else entry["ci_low"]))
            high.append((y[-1] if entry["ci_high"] is None else entry["ci_high"]) - y[-1])
        ax.errorbar(x, y, yerr=[low, high], color=color, marker=marker, ms=6, lw=1.5, capsize=4, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, labels=[str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlim(min(sizes) / 1.4, max(sizes) * 1.4)
        ax.set(xlabel="image size (px, log2 axis)", title=panel)
        ax.grid(alpha=0.3)
        if panel == "AUC" and key == shared[-1]:
            ax.axhline(0.5, color="0.6", ls="--", lw=1)
            # Labelled on the line, not in the legend, which sits over its right end.
            ax.text(min(sizes) / 1.35, 0.505, "chance", color="0.45", fontsize=8, va="bottom")
            ax.set_ylim(min(ax.get_ylim()[0], 0.45), 1.02)
    for ax in axes.values():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    figure.suptitle("Test-split metrics by input size (one model per size), 95% CI error bars", fontsize=11)
    if subtitle:
        figure.text(0.5, -0.01, subtitle, ha="center", va="top", fontsize=7.5, color="0.25", wrap=True)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.15)


def caption(results: Sequence[Mapping], settings: Mapping[str, Any]) -> str:
    """What the numbers are: split, CI method, and the training settings shared by every size."""
    boot = _sorted(results)[0]["bootstrap"] if results else {}
    shared = ", ".join(f"{key} {value}" for key, value in settings.items())
    return (f"Test split; {boot.get('ci_level', 0.95):.0%} CIs from a {boot.get('resampling_unit', 'patient')}-level "
            f"percentile bootstrap ({boot.get('n_boot', '?')} resamples). One model per size: {shared}. "
            "r and MAE over images with a BNPP value; AUC BNPP>400 over images whose BNPP is on a known side of "
            "400 pg/mL.")


def write_report(results: Sequence[Mapping], out_dir: str | Path, settings: Mapping[str, Any],
                 extra: Extra | None = None) -> dict[str, Path]:
    """resolution.md, resolution.csv and resolution.png in out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in OUTPUT_FILES.items()}
    note = caption(results, settings)
    paths["markdown"].write_text("# Resolution study\n\n" + markdown_table(results, extra, note))
    write_csv(csv_rows(results, extra), paths["csv"])
    counts = {(result["n_images"], result["n_patients"]) for result in results}
    tested = f"{min(counts)[0]} test images ({min(counts)[1]} patients) at every size. " if len(counts) == 1 else ""
    plot_study(results, paths["plot"], subtitle=tested + note)
    return paths


# ---------------------------------------------------------------- running the study

def missing_records(records_dir: str | Path, sizes: Sequence[int]) -> dict[int, list[str]]:
    """{size: splits without shards} for every size missing at least one of train, val, test."""
    from bnp_cxr.records.schema import has_shards

    missing = {size: [split for split in SPLITS if not has_shards(records_dir, split, size)]
               for size in sizes}
    return {size: splits for size, splits in missing.items() if splits}


def write_phantom_records(records_dir: str | Path, sizes: Sequence[int], cohort_dir: str | Path = COHORT_DIR,
                          workers: int | None = None) -> dict:
    """Records at `sizes` from the phantom cohort (generated if absent), resuming any in records_dir; the summary."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.phantom import generate_cohort
    from bnp_cxr.records.writer import IngestConfig, write_records

    workers = workers or os.cpu_count() or 1
    cohort = Path(cohort_dir)
    generate_cohort(cohort, workers=workers)
    manifest = load_manifest(cohort / "manifest.csv", cohort / "labs.csv")
    return write_records(manifest, records_dir, IngestConfig(sizes=tuple(sorted(sizes)), workers=workers, resume=True))


def records_command(records_dir: str | Path, sizes: Sequence[int]) -> str:
    """The tools/make_tfrecords.py command that adds records at these sizes (the phantom cohort by default)."""
    return (f"python tools/make_tfrecords.py --out {records_dir} --sizes {' '.join(map(str, sorted(sizes)))} "
            "--resume   # add --manifest/--labs for your own archive")


@dataclass(frozen=True)
class SizeOutcome:
    """What the study did at one size, and the test metrics (metrics.json) it ended with."""

    size: int
    run_dir: Path
    action: str  # trained | resumed | evaluated | reused
    metrics: dict
    seconds: float
    config: dict


def plan_size(config: TrainConfig, n_boot: int) -> tuple[str, str]:
    """(action, why) for a resolved config: train, resume, evaluate or reuse; ValueError when the run differs."""
    from bnp_cxr.training.config import TrainConfig, identity_mismatches
    from bnp_cxr.training.loop import completed_epochs, data_fingerprint

    run, records_dir = RunDir(config.run_dir), Path(config.records_dir)
    run_dir = run.path
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "train", "no run yet"
    if not run.config.is_file():
        raise ValueError(f"{run_dir} is not empty but has no {RunDir.CONFIG}: not a training run; move it away")
    saved = json.loads(run.config.read_text())
    differences = identity_mismatches(TrainConfig.from_json(saved), config)
    if saved.get("epochs") != config.epochs:
        differences.append(f"epochs: {saved.get('epochs')!r} -> {config.epochs!r}")
    done = completed_epochs(run_dir)
    model = run.model
    if saved.get("data", {}).get("sha256") != data_fingerprint(records_dir, config.size)["sha256"]:
        differences.append("records changed since the run was trained")
    if differences:
        raise ValueError(f"{run_dir} was trained with other settings ({'; '.join(differences)}); "
                         "pass --retrain to replace it, or choose another --runs folder")
    if done < config.epochs:
        return "resume", f"{done} of {config.epochs} epochs done"
    if not model.is_file():
        raise ValueError(f"{run_dir} finished {done} epochs but has no {RunDir.MODEL} (no finite val loss?); "
                         "pass --retrain")
    metrics_path = run.metrics
    if metrics_path.is_file() and metrics_path.stat().st_mtime >= model.stat().st_mtime:
        metrics = json.loads(metrics_path.read_text())
        if (metrics.get("split"), metrics.get("bootstrap", {}).get("n_boot"), metrics.get("records_dir")) == (
                "test", n_boot, str(records_dir)):
            return "reuse", "finished and evaluated with these settings"
    return "evaluate", "finished; test metrics missing, stale or with another bootstrap"


def size_config(options: Mapping[str, Any], size: int, runs_root: str | Path, preset: str | None = None,
                resume: bool = False) -> TrainConfig:
    """The training config of one size: the shared options, this size, and run_dir runs_root/size{size}.

    The model reads each size in full (model_px = size) unless the options cap it: the study compares resolutions.
    It trains from scratch (pretrain none) unless the options ask for pretraining, whose cost grows with the area.
    """
    from bnp_cxr.training.config import make_config

    run_dir = str(RunDir.for_size(size, runs_root).path)
    return make_config({"model_px": size, "pretrain": "none", **options, "size": size, "run_dir": run_dir},
                       preset=preset, resume=resume)


def run_size(options: Mapping[str, Any], size: int, runs_root: str | Path, *, preset: str | None = None,
             n_boot: int = 2000, retrain: bool = False, verbose: int = 1,
             log: Callable[[str], None] = print) -> SizeOutcome:
    """Train, resume, evaluate or reuse the run of one size (see plan_size); returns its test metrics."""
    from bnp_cxr.evaluation.evaluate import evaluate_run
    from bnp_cxr.training import resolve, train
    from bnp_cxr.training.config import gpus_visible

    started = time.perf_counter()
    config = size_config(options, size, runs_root, preset)
    resolved, _ = resolve(config, gpus_visible())
    run = RunDir(resolved.run_dir)
    run_dir = run.path
    if retrain and run_dir.exists():
        if any(run_dir.iterdir()) and not run.config.is_file():
            raise ValueError(f"{run_dir} has no {RunDir.CONFIG}: not a training run, not deleting it")
        shutil.rmtree(run_dir)
    action, why = plan_size(resolved, n_boot)
    log(f"size {size}: {action} {run_dir} ({why})")
    if action in ("train", "resume"):
        result = train(size_config(options, size, runs_root, preset, resume=action == "resume"),
                       verbose=verbose, log=log)
        if result.epochs_completed < result.config.epochs:
            raise RuntimeError(f"{run_dir} stopped after {result.epochs_completed} of {result.config.epochs} epochs")
    if action == "reuse":
        metrics = json.loads(run.metrics.read_text())
    else:
        metrics = evaluate_run(run_dir, resolved.records_dir, split="test", n_boot=n_boot)
    saved = json.loads(run.config.read_text())
    seconds, done = time.perf_counter() - started, PAST_TENSE[action]
    log(f"size {size}: {done} in {seconds:.0f} s; test AUC combined "
        f"{format_entry(metrics['metrics']['auc_combined'])}")
    return SizeOutcome(size, run_dir, done, metrics, seconds, saved)


def shared_settings(configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The runs' training settings as caption text ("a/b" where sizes differ), keyed by their caption label."""
    shown = {"backbone": ("backbone", str), "weights": ("weights", lambda v: "from scratch" if v is None else str(v)),
             "epochs": ("epochs", str), "batch_size": ("batch", str), "lr": ("Adam lr", lambda v: f"{v:g}"),
             "schedule": ("schedule", str), "augment": ("augmentation", lambda v: "on" if v else "off"),
             "seed": ("seed", str)}
    settings = {}
    for key, (label, show) in shown.items():
        values = list(dict.fromkeys(show(config.get(key)) for config in configs))
        settings[label] = "/".join(values)
    return settings


def run_study(sizes: Sequence[int], options: Mapping[str, Any], runs_root: str | Path, out_dir: str | Path, *,
              preset: str | None = None, n_boot: int = 2000, retrain: bool = False, verbose: int = 1,
              extra: Extra | None = None, log: Callable[[str], None] = print) -> tuple[list[SizeOutcome], dict]:
    """Every size in turn (run_size), then the report (write_report); returns the outcomes and report paths."""
    outcomes = [run_size(options, size, runs_root, preset=preset, n_boot=n_boot, retrain=retrain, verbose=verbose,
                         log=log) for size in sorted(set(sizes))]
    settings = shared_settings([outcome.config for outcome in outcomes])
    paths = write_report([outcome.metrics for outcome in outcomes], out_dir, settings, extra)
    return outcomes, paths
