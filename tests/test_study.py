"""Resolution study: report tables and plot as pure functions, run planning and reuse, the CLI, end to end."""

import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from archives import heart_records
from bnp_cxr.evaluation import study
from bnp_cxr.training import train
from bnp_cxr.training.config import resolve
from bnp_cxr.training.loop import MODEL_FILE, completed_epochs

ROOT = Path(__file__).resolve().parents[1]
SIZES = (64, 128)
SPLIT_SIZES = {"train": 16, "val": 6, "test": 8}
N_BOOT = 1000


# ---------------------------------------------------------------- pure report functions

def entry(estimate, low=None, high=None, n=10):
    return {"estimate": estimate, "ci_low": low, "ci_high": high, "n": n, "n_patients": n, "n_boot_valid": N_BOOT,
            "n_boot_skipped": 0}


def fake_result(size: int, auc: float | None, n_images: int = 30) -> dict:
    """A metrics.json-shaped dict; every table metric derived from `auc` so rows are told apart."""
    metrics = {key: entry(auc, auc - 0.1, auc + 0.05) if auc is not None else entry(None)
               for key, _, _ in study.TABLE_METRICS}
    metrics["mae_log10_bnpp"] = entry(0.4, 0.3, 0.5)
    return {"size": size, "n_images": n_images, "n_patients": n_images - 4, "metrics": metrics,
            "bootstrap": {"ci_level": 0.95, "resampling_unit": "patient", "n_boot": 2000}}


@pytest.mark.parametrize("value, expected", [
    (entry(0.91234, 0.8, 0.98), "0.912 [0.800, 0.980]"),
    (entry(0.5, None, None), "0.500 [n/a]"),
    (entry(None), "n/a"),
    (0.25, "0.250"),
    (12, "12"),
    ("Grad-CAM", "Grad-CAM"),
])
def test_format_entry(value, expected):
    assert study.format_entry(value) == expected


def test_markdown_table_sorts_sizes_and_places_extra_columns():
    results = [fake_result(256, 0.8), fake_result(64, 0.7), fake_result(128, None)]
    extra = {64: {"lung attribution": entry(0.61, 0.5, 0.7)}, 256: {"lung attribution": "0.7", "note": "x"}}
    lines = study.markdown_table(results, extra, caption="Test split.").splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Size (px)", "Test images (patients)", *(title for _, title, _ in study.TABLE_METRICS),
                      "lung attribution", "note"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:5]]
    assert [row[0] for row in rows] == ["64", "128", "256"]
    assert rows[0][1] == "30 (26)" and rows[0][2] == "0.700 [0.600, 0.750]"
    assert rows[1][2] == "n/a" and rows[1][-2:] == ["", ""]
    assert rows[0][-2:] == ["0.610 [0.500, 0.700]", ""] and rows[2][-2:] == ["0.7", "x"]
    assert all(len(row) == len(header) for row in rows) and lines[-1] == "Test split."


def test_csv_rows_flatten_every_metric_and_extra_entries(tmp_path):
    results = [fake_result(128, 0.75), fake_result(64, 0.7)]
    rows = study.csv_rows(results, {128: {"attr": entry(0.3, 0.2, 0.4), "label": "on"}})
    assert [row["size"] for row in rows] == [64, 128]
    assert rows[1]["auc_combined"] == 0.75 and rows[1]["auc_combined_ci_low"] == pytest.approx(0.65)
    assert rows[1]["auc_combined_n"] == 10 and rows[1]["attr_ci_high"] == 0.4 and rows[1]["label"] == "on"
    assert rows[0]["attr"] is None
    path = tmp_path / "study.csv"
    study.write_csv(rows, path)
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [row["size"] for row in read] == ["64", "128"] and read[0]["attr"] == "" and read[1]["label"] == "on"
    assert float(read[0]["mae_log10_bnpp_ci_high"]) == 0.5


def test_plot_handles_undefined_metrics(tmp_path):
    path = tmp_path / "plot.png"
    study.plot_study([fake_result(64, None), fake_result(128, 0.8), fake_result(1024, 0.9)], path, subtitle="note")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] > image.shape[0] > 300


# ---------------------------------------------------------------- tiny records, the study end to end

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """30 PNGs whose bright 'heart' grows with the labs, one patient each, explicit splits; records at 64, 128 px."""
    # Evenly spread severities: every split holds positives and negatives.
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLIT_SIZES, SIZES,
                         severities=lambda rng, count: np.linspace(0.05, 0.95, count), seed=2,
                         bnp_on=lambda index: index % 3 == 0, bnpp_on=lambda index: True)


def tiny_options(records, **changes) -> dict:
    return {"records_dir": str(records), "backbone": "small_cnn", "members": 1, "epochs": 1, "batch_size": 8,
            "shuffle_buffer": 32, **changes}


@pytest.fixture(scope="module")
def finished(records, tmp_path_factory):
    """A study at 64 and 128 px with 1 epoch each: (outcomes, report paths, runs root, log lines)."""
    root = tmp_path_factory.mktemp("study")
    lines: list[str] = []
    outcomes, paths = study.run_study(SIZES, tiny_options(records), root / "runs", root / "out", n_boot=N_BOOT,
                                      verbose=0, log=lines.append)
    return outcomes, paths, root / "runs", lines


def test_study_trains_evaluates_and_reports_every_size(finished, records):
    outcomes, paths, runs, _ = finished
    assert [(o.size, o.action) for o in outcomes] == [(64, "trained"), (128, "trained")]
    for outcome in outcomes:
        run = runs / f"size{outcome.size}"
        assert outcome.run_dir == run and (run / MODEL_FILE).is_file() and completed_epochs(run) == 1
        saved = json.loads((run / "metrics.json").read_text())
        assert saved == outcome.metrics and saved["size"] == outcome.size
        assert saved["n_images"] == SPLIT_SIZES["test"] and saved["bootstrap"]["n_boot"] == N_BOOT
    table = paths["markdown"].read_text()
    assert table.startswith("# Resolution study") and "small_cnn" in table and "epochs 1" in table
    data_rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in data_rows] == ["64", "128"]
    assert all(f"| {SPLIT_SIZES['test']} ({SPLIT_SIZES['test']}) |" in row for row in data_rows)
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["size"]) for row in rows] == list(SIZES)
    for row, outcome in zip(rows, outcomes):
        expected = outcome.metrics["metrics"]["auc_combined"]["estimate"]
        assert float(row["auc_combined"]) == pytest.approx(expected)
    assert cv2.imread(str(paths["plot"])) is not None


def test_second_study_reuses_runs_without_training(finished, records, tmp_path):
    _, _, runs, _ = finished
    before = {size: (runs / f"size{size}" / MODEL_FILE).stat().st_mtime_ns for size in SIZES}
    lines: list[str] = []
    outcomes, _ = study.run_study(SIZES, tiny_options(records), runs, tmp_path / "out", n_boot=N_BOOT, verbose=0,
                                  log=lines.append)
    assert [o.action for o in outcomes] == ["reused", "reused"]
    assert {size: (runs / f"size{size}" / MODEL_FILE).stat().st_mtime_ns for size in SIZES} == before
    assert not any("Strategy" in line for line in lines)  # train() logs its strategy line first
    assert (tmp_path / "out" / "resolution.md").is_file()


def copy_runs(finished, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(finished[2], copy)
    return copy


@pytest.mark.parametrize("changes, n_boot, expected", [
    ({}, N_BOOT + 500, "evaluated"),  # another bootstrap: evaluate again, keep the model
    ({"epochs": 2}, N_BOOT, "epochs: 1 -> 2"),
    ({"lr": 0.01}, N_BOOT, "lr: 0.001 -> 0.01"),
])
def test_changed_settings_re_evaluate_or_are_refused(finished, records, tmp_path, changes, n_boot, expected):
    runs = copy_runs(finished, tmp_path)
    model = runs / "size64" / MODEL_FILE
    before = model.stat().st_mtime_ns
    if expected == "evaluated":
        outcome = study.run_size(tiny_options(records, **changes), 64, runs, n_boot=n_boot, verbose=0, log=print)
        assert outcome.action == "evaluated" and outcome.metrics["bootstrap"]["n_boot"] == n_boot
    else:
        with pytest.raises(ValueError, match=f"{expected}.*--retrain"):
            study.run_size(tiny_options(records, **changes), 64, runs, n_boot=n_boot, verbose=0, log=print)
    assert model.stat().st_mtime_ns == before


def test_retrain_replaces_the_run(finished, records, tmp_path):
    runs = copy_runs(finished, tmp_path)
    outcome = study.run_size(tiny_options(records, epochs=2), 64, runs, n_boot=N_BOOT, retrain=True, verbose=0,
                             log=print)
    assert outcome.action == "trained" and completed_epochs(runs / "size64") == 2


class Crash(Exception):
    """A simulated interruption."""


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise Crash(f"interrupted after epoch {epoch}")


def test_partial_run_is_resumed(records, tmp_path):
    options = tiny_options(records, epochs=2)
    with pytest.raises(Crash):
        train(study.size_config(options, 64, tmp_path), callbacks=[Interrupt()], verbose=0, log=print)
    assert completed_epochs(tmp_path / "size64") == 1
    outcome = study.run_size(options, 64, tmp_path, n_boot=N_BOOT, verbose=0, log=print)
    assert outcome.action == "resumed" and completed_epochs(tmp_path / "size64") == 2
    sessions = json.loads((tmp_path / "size64" / "config.json").read_text())["sessions"]
    assert [session["resumed"] for session in sessions] == [False, True]


@pytest.mark.parametrize("fingerprint_same, expected", [(True, "reuse"), (False, "records changed")])
def test_plan_checks_the_records_a_finished_run_read(finished, records, tmp_path, fingerprint_same, expected):
    runs = copy_runs(finished, tmp_path)
    config_path = runs / "size64" / "config.json"
    saved = json.loads(config_path.read_text())
    if not fingerprint_same:
        saved["data"]["sha256"] = "0" * 64
    config_path.write_text(json.dumps(saved))
    config, _ = resolve(study.size_config(tiny_options(records), 64, runs), 0)
    if expected == "reuse":
        assert study.plan_size(config, N_BOOT)[0] == "reuse"
    else:
        with pytest.raises(ValueError, match=expected):
            study.plan_size(config, N_BOOT)


@pytest.mark.parametrize("options, expected", [({}, {64: 64, 256: 256, 512: 512}),
                                               ({"model_px": 128}, {64: 64, 256: 128, 512: 128})])
def test_study_reads_each_size_in_full_unless_capped(tmp_path, options, expected):
    resolved = {size: resolve(study.size_config(options, size, tmp_path), 0)[0].model_px for size in expected}
    assert resolved == expected


@pytest.mark.parametrize("options, expected", [({}, "none"), ({"pretrain": "simclr"}, "simclr")])
def test_study_trains_from_scratch_unless_asked_to_pretrain(tmp_path, options, expected):
    assert {resolve(study.size_config(options, size, tmp_path), 0)[0].pretrain for size in (64, 256)} == {expected}


@pytest.mark.parametrize("present, sizes, expected", [
    ({64: ("train", "val", "test")}, (64,), {}),
    ({64: ("train", "val", "test")}, (64, 256), {256: ["train", "val", "test"]}),
    ({64: ("train", "test")}, (64,), {64: ["val"]}),
])
def test_missing_records_and_the_command_to_write_them(tmp_path, present, sizes, expected):
    for size, splits in present.items():
        for split in splits:
            (tmp_path / f"{split}-{size}px-00000-of-00001.tfrecord").write_bytes(b"")
    missing = study.missing_records(tmp_path, sizes)
    assert missing == expected
    if missing:
        command = study.records_command(tmp_path, missing)
        assert f"tools/make_tfrecords.py --out {tmp_path} --sizes {' '.join(map(str, expected))}" in command


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def cli():
    from bnp_cxr.cli import resolution_study

    return resolution_study


def test_cli_passes_training_options_and_reuses_the_study(cli, finished, records, tmp_path, capsys):
    runs = copy_runs(finished, tmp_path)
    code = cli.main(["--sizes", *map(str, SIZES), "--records", str(records), "--runs", str(runs), "--out",
                     str(tmp_path / "out"), "--backbone", "small_cnn", "--members", "1", "--epochs", "1",
                     "--batch-size", "8", "--n-boot", str(N_BOOT), "--verbose", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "64 reused" in out and "128 reused" in out and "| 128 |" in out
    assert (tmp_path / "out" / "resolution.png").is_file()


def test_cli_names_the_records_command_for_missing_sizes(cli, records, tmp_path, capsys):
    code = cli.main(["--sizes", "64", "256", "--records", str(records), "--runs", str(tmp_path / "runs")])
    error = capsys.readouterr().err
    assert code == 2 and "256 px: no train, val, test" in error
    assert f"python tools/make_tfrecords.py --out {records} --sizes 256 --resume" in error
    assert "--make-records" in error and not (tmp_path / "runs").exists()


def write_in_lung_table(path: Path, sizes) -> Path:
    """An in_lung.csv as tools/attribute.py writes it, from per-image fractions that grow with size."""
    import pandas as pd

    from bnp_cxr.attribution.inlung import aggregate_in_lung

    rng = np.random.default_rng(0)
    rows = [{"method": method, "size": size, "patient_id": f"p{image}", "image_id": f"i{image}",
             "mass_in_lung_fraction": base + size / 1000 + rng.uniform(0, 0.02),
             "top_in_lung_fraction": base + size / 500 + rng.uniform(0, 0.02),
             "lung_area_fraction": 0.2 + rng.uniform(0, 0.01)}
            for method, base in (("vanilla", 0.3), ("xrai", 0.2)) for size in sizes for image in range(6)]
    aggregate_in_lung(pd.DataFrame(rows), n_boot=N_BOOT).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("stale", [False, True])
def test_cli_adds_in_lung_columns_from_attribution(cli, finished, records, tmp_path, capsys, stale):
    runs = copy_runs(finished, tmp_path)
    table = write_in_lung_table(tmp_path / "in_lung.csv", SIZES)
    if stale:  # a model retrained after the attribution: its size's columns would describe another model
        model = runs / "size128" / MODEL_FILE
        later = table.stat().st_mtime + 60
        os.utime(model, (later, later))
    code = cli.main(["--sizes", *map(str, SIZES), "--records", str(records), "--runs", str(runs), "--out",
                     str(tmp_path / "out"), "--backbone", "small_cnn", "--members", "1", "--epochs", "1",
                     "--batch-size", "8", "--n-boot", str(N_BOOT), "--verbose", "0", "--in-lung", str(table)])
    out = capsys.readouterr().out
    assert code == 0, out
    with open(tmp_path / "out" / "resolution.csv", newline="") as handle:
        rows = {int(row["size"]): row for row in csv.DictReader(handle)}
    column = "in-lung mass, Gradient"
    assert float(rows[64][column]) == pytest.approx(0.3 + 0.064 + 0.01, abs=0.011)
    assert float(rows[64][f"{column}_ci_low"]) <= float(rows[64][column]) <= float(rows[64][f"{column}_ci_high"])
    if stale:
        assert "left out at [128] px" in out and not rows[128].get(column)
    else:
        assert float(rows[128][column]) > float(rows[64][column])
        assert "lung area fraction (chance)" in (tmp_path / "out" / "resolution.md").read_text()


@pytest.mark.parametrize("flag, expected", [([], None), (["--xla"], True), (["--no-xla"], False)])
def test_cli_takes_train_py_precision_options(cli, flag, expected):
    from bnp_cxr.training.arguments import training_options

    options = training_options(cli.build_parser().parse_args(["--mixed-precision", "bfloat16", *flag]))
    assert (options.get("xla"), options["mixed_precision"]) == (expected, "bfloat16")
    assert not {"size", "run_dir", "resume"} & set(options)
