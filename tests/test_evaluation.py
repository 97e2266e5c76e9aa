"""Evaluation end to end: PNG archive -> records -> a hand-set Keras model -> predictions, metrics, figures, CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from archives import png_records, write_run

from bnp_cxr.evaluation import evaluate as evaluation
from bnp_cxr.evaluation import metrics
from bnp_cxr.workspace import RunDir

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
# The model reads the bright fraction f of an image (global average pooling) and maps it linearly:
# log10 BNP = 1.0 + 2.5 f, log10 BNPP = 1.5 + 3.5 f (output order of the reader's targets).
SLOPE, INTERCEPT = np.array([2.5, 3.5]), np.array([1.0, 1.5])
N_PATIENTS, IMAGES_PER_PATIENT = 16, 2
LAB_NOISE_LOG10 = 0.2  # what the image cannot explain, so the curves and CIs are not degenerate


def banded_image(fraction: float, rng) -> np.ndarray:
    """A 16-bit image whose top `fraction` of rows is bright: after the records' percentile window its
    mean is about `fraction`, whatever the windowing does to the absolute grey levels."""
    image = np.full((128, 128), 8000.0) + rng.normal(0, 20, (128, 128))
    image[: round(fraction * 128)] += 30000
    return np.clip(image, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Records of a 16-patient test split (2 images each) plus 2 training patients, and the truth."""
    rng = np.random.default_rng(0)

    def entries():
        for i, fraction in enumerate(np.linspace(0.12, 0.88, N_PATIENTS * IMAGES_PER_PATIENT)):
            image = banded_image(fraction, rng)
            bnp, bnpp = 10 ** (INTERCEPT + SLOPE * fraction + rng.normal(0, LAB_NOISE_LOG10, 2))
            bnp_cell = "" if i % 4 == 3 else f"{bnp:.1f}"  # a quarter without BNP
            bnpp_cell = ">35000" if bnpp > 35000 else f"{bnpp:.1f}"
            patient = f"MRN{i // IMAGES_PER_PATIENT:03d}"
            yield f"im{i}.png", image, f"{patient},im{i}.png,2021-03-{i % 28 + 1:02d},{bnp_cell},{bnpp_cell},PA,test"
        for i in range(2):
            yield f"train{i}.png", banded_image(0.5, rng), f"TRAIN{i},train{i}.png,2021-04-01,,500,PA,train"

    out = tmp_path_factory.mktemp("records")
    png_records(tmp_path_factory.mktemp("archive"), out, "patient_id,image_path,study_datetime,bnp,bnpp,view,split",
                entries(), (SIZE,))
    return out


def build_model():
    """GAP -> Dense(2) with weights set to the generating line, so predictions track the truth."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(2, name="log10_bnp_bnpp")(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer("log10_bnp_bnpp").set_weights([SLOPE[None, :].astype("float32"), INTERCEPT.astype("float32")])
    return model


@pytest.fixture(scope="module")
def run_dir(records, tmp_path_factory):
    return write_run(RunDir.for_size(SIZE, tmp_path_factory.mktemp("runs")).path, build_model(), SIZE, records,
                     backbone="tiny")


@pytest.fixture(scope="module")
def evaluated(run_dir):
    return evaluation.evaluate_run(run_dir, n_boot=1000, seed=3)


def test_predict_split_rows_and_values(records):
    import tensorflow as tf

    model = build_model()
    frame = evaluation.predict_split(model, records, "test", SIZE, batch_size=5)
    assert list(frame.columns) == list(evaluation.PREDICTION_COLUMNS)
    assert len(frame) == N_PATIENTS * IMAGES_PER_PATIENT and frame["image_id"].is_unique
    assert frame["patient_id"].nunique() == N_PATIENTS
    assert not frame["patient_id"].str.contains("MRN").any()  # pseudonymous IDs only
    # Predictions are the model's on the same images, whatever the batching.
    images = next(iter(tf.data.Dataset.from_tensor_slices(
        _images_by_id(records, frame["image_id"])).batch(64)))
    np.testing.assert_allclose(frame[["pred_log10_bnp", "pred_log10_bnpp"]], model(images).numpy(), atol=1e-5)
    assert frame["true_log10_bnp"].isna().sum() == N_PATIENTS * IMAGES_PER_PATIENT // 4
    assert frame["bnpp_censored"].isin([0, 1]).all() and set(frame["positive"]) <= {0, 1}


def _images_by_id(records, image_ids):
    from bnp_cxr.records.reader import make_dataset

    found = {}
    for images, _, meta in make_dataset(records, "test", SIZE, batch_size=7, with_metadata=True, deterministic=True):
        found.update(zip((v.decode() for v in meta["image_id"].numpy()), images.numpy()))
    return np.stack([found[image_id] for image_id in image_ids])


def test_evaluate_run_writes_every_file(evaluated, run_dir):
    for name in ("predictions.csv", "metrics.json", "roc.png", "scatter.png"):
        assert (run_dir / name).stat().st_size > 0
    for name in ("roc.png", "scatter.png"):
        image = cv2.imread(str(run_dir / name))
        assert image.shape[0] > 600 and image.shape[1] > 600 and image.std() > 10  # a drawn figure, not blank
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["bootstrap"] == {**saved["bootstrap"], "n_boot": 1000, "seed": 3, "resampling_unit": "patient"}
    assert "patient" in saved["bootstrap"]["method"] and saved["size"] == SIZE and saved["split"] == "test"
    assert saved["n_images"] == N_PATIENTS * IMAGES_PER_PATIENT and saved["n_patients"] == N_PATIENTS


def test_metrics_follow_the_known_truth(evaluated):
    result = evaluated["metrics"]
    for test in ("bnpp", "bnp"):
        # Expected r = sd(signal) / sd(signal + noise) ~ 0.96 (BNPP), 0.94 (BNP); MAE ~ 0.8 * 0.2 = 0.16.
        assert result[f"pearson_r_log10_{test}"]["estimate"] > 0.85
        assert result[f"mae_log10_{test}"]["estimate"] < 1.5 * 0.8 * LAB_NOISE_LOG10
    for task in ("bnpp_gt_400", "bnp_gt_100", "combined"):
        assert result[f"auc_{task}"]["estimate"] > 0.8
    assert result["pearson_r_log10_bnp"]["n"] == N_PATIENTS * IMAGES_PER_PATIENT * 3 // 4
    for entry in result.values():
        assert set(entry) == {"estimate", "ci_low", "ci_high", "n", "n_patients", "n_boot_valid", "n_boot_skipped"}
        assert entry["ci_low"] <= entry["estimate"] + 1e-9 and entry["estimate"] <= entry["ci_high"] + 1e-9
        assert entry["n_boot_valid"] + entry["n_boot_skipped"] == 1000


def test_metrics_json_matches_predictions_csv(evaluated, run_dir):
    """metrics.json is what compute_metrics gives on predictions.csv: nothing else feeds it."""
    table = pd.read_csv(RunDir(run_dir).predictions)
    again = metrics.compute_metrics(table, n_boot=1000, seed=3)
    for name, entry in evaluated["metrics"].items():
        for key in ("estimate", "ci_low", "ci_high"):
            assert again["metrics"][name][key] == pytest.approx(entry[key], abs=2e-5), (name, key)


def test_cli_prints_table_and_writes_files(records, run_dir, tmp_path):
    run = tmp_path / "cli_run"
    run.mkdir()
    for name in (RunDir.MODEL, RunDir.CONFIG):
        (run / name).write_bytes((run_dir / name).read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--size", str(SIZE), "--run-dir",
                           str(run), "--records", str(records), "--n-boot", "1000", "--seed", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "auc_combined" in done.stdout and "patient-level percentile bootstrap" in done.stdout
    assert json.loads(RunDir(run).metrics.read_text())["bootstrap"]["seed"] == 1
    assert (run / "roc.png").is_file() and (run / "scatter.png").is_file()


def test_out_writes_elsewhere_and_leaves_the_run_evaluation_in_place(evaluated, records, run_dir, tmp_path, capsys):
    """--out: another site's records are scored into their own folder; the run's metrics and report stay."""
    from bnp_cxr.cli import evaluate as cli

    kept = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    out = tmp_path / "other_site"
    assert cli.main(["--size", str(SIZE), "--run-dir", str(run_dir), "--records", str(records), "--n-boot", "1000",
                     "--seed", "2", "--out", str(out)]) == 0
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == kept
    result = json.loads(RunDir(out).metrics.read_text())
    assert result["bootstrap"]["seed"] == 2 and result["n_images"] == evaluated["n_images"]
    assert sorted(path.name for path in out.iterdir()) == sorted([RunDir.PREDICTIONS, RunDir.METRICS, "roc.png",
                                                                 "scatter.png"])
    assert f"to {out} (the run's own evaluation in {run_dir} is unchanged)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--run-dir", "{missing}"], "config.json"),
    (["--run-dir", "{run}", "--n-boot", "10"], "n_boot"),
])
def test_cli_errors_are_one_line(argv, message, run_dir, tmp_path, capsys):
    from bnp_cxr.cli import evaluate as cli

    argv = [arg.format(missing=tmp_path / "nothing", run=run_dir) for arg in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_reported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"size": SIZE}))
    with pytest.raises(FileNotFoundError, match="model.keras"):
        evaluation.evaluate_run(tmp_path)


def test_format_table_lists_every_metric(evaluated):
    table = evaluation.format_table(evaluated)
    assert all(name in table for name in evaluated["metrics"])
    assert math.isfinite(evaluated["metrics"]["auc_combined"]["estimate"])


@pytest.fixture(scope="module")
def finding_records(tmp_path_factory):
    """Test-split records with two finding columns: `edema` follows the bright fraction, `tb` is never given."""
    rng = np.random.default_rng(5)

    def entries():
        for i, fraction in enumerate(np.linspace(0.12, 0.88, 24)):
            edema = "" if i % 6 == 0 else str(int(fraction + rng.normal(0, 0.15) > 0.5))
            yield (f"im{i}.png", banded_image(fraction, rng),
                   f"P{i // 2},im{i}.png,2021-03-01,,{10 ** (1.5 + 3.5 * fraction):.1f},test,{edema},")
        yield "train.png", banded_image(0.5, rng), "T0,train.png,2021-04-01,,500,train,0,"

    out = tmp_path_factory.mktemp("finding_records")
    png_records(tmp_path_factory.mktemp("finding_archive"), out,
                "patient_id,image_path,study_datetime,bnp,bnpp,split,edema,tb", entries(), (SIZE,))
    return out


@pytest.mark.parametrize("standardize", ["none", "clahe"])
def test_findings_travel_to_predictions_and_get_an_auc_each(finding_records, tmp_path, standardize):
    from sklearn.metrics import roc_auc_score

    run = write_run(tmp_path / "run", build_model(), SIZE, finding_records, standardize=standardize)
    result = evaluation.evaluate_run(run, n_boot=1000, seed=0)
    table = pd.read_csv(RunDir(run).predictions)
    assert list(table.columns) == [*evaluation.PREDICTION_COLUMNS, "edema", "tb"]
    assert set(table["tb"]) == {-1} and (table["edema"] == -1).sum() == 4
    known = table["edema"] >= 0
    edema = result["findings"]["edema"]
    assert edema["estimate"] == pytest.approx(roc_auc_score(table["edema"][known], table["pred_log10_bnpp"][known]))
    assert edema["n"] == known.sum() and edema["estimate"] > 0.8  # edema follows the bright fraction
    assert result["findings"]["tb"]["estimate"] is None and result["findings"]["tb"]["n"] == 0
    assert json.loads(RunDir(run).metrics.read_text())["findings"] == result["findings"]
    assert "auc_pred_bnpp_vs_edema" in evaluation.format_table(result)
    assert set(result["negatives"]) == {"clear", "other_findings"}  # both kinds of negative are reported
    assert "auc_combined_vs_other_findings" in evaluation.format_table(result)
    # The run's standardisation is applied: CLAHE moves the global mean the model reads.
    plain = evaluation.predict_split(build_model(), finding_records, "test", SIZE)
    same = np.allclose(plain["pred_log10_bnpp"], table["pred_log10_bnpp"], atol=1e-4)
    assert same == (standardize == "none")


def test_records_without_findings_give_the_fixed_columns_and_no_finding_metrics(evaluated, run_dir):
    assert "findings" not in evaluated
    assert list(pd.read_csv(RunDir(run_dir).predictions).columns) == list(evaluation.PREDICTION_COLUMNS)
