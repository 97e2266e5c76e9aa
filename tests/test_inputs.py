"""Records without a val split (training.inputs.check_val_split): the CPU default (last epoch kept) trains on every
film; a run that needs val (lowest val loss kept, or val fitted too) refuses them before anything is written."""

import json
import math
from functools import partial
from pathlib import Path

import pytest

from archives import heart_records, run_documented_tool
from bnp_cxr.training import make_config, resolve, train
from bnp_cxr.training.inputs import check_val_split, make_datasets
from bnp_cxr.training.loop import data_fingerprint
from bnp_cxr.workspace import RunDir, read_history

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih"
NO_VAL = {"train": 24, "test": 4}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Records at 64 px with train and test splits and no val split (a run meant to fit every labelled film)."""
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), NO_VAL, (64,),
                         severities=lambda rng, count: rng.random(count), seed=2,
                         bnp_on=lambda index: index % 2 == 0, bnpp_on=lambda index: True)


def tiny_config(records, run_dir, **options):
    base = {"records_dir": str(records), "size": 64, "backbone": "small_cnn", "epochs": 2, "batch_size": 8,
            "run_dir": str(run_dir), "shuffle_buffer": 64, "members": 1, "pretrain": "none", "keep": "last"}
    return make_config({**base, **options})


@pytest.mark.parametrize("options, message", [
    ({"keep": "best"}, "keep 'best' picks the epoch of lowest val loss"),
    ({"train_on_val": True}, "--train-on-val has no val images to fit"),
    ({"keep": "best", "members": 2, "pretrain": "simclr", "pretrain_epochs": 1}, "pass --keep last"),
])
def test_a_run_that_needs_val_records_refuses_records_without_them(records, tmp_path, options, message):
    config = tiny_config(records, tmp_path / "run", **options)
    with pytest.raises(ValueError, match=message) as raised:
        train(config, verbose=0)
    assert f"no val records at 64 px in {records}" in str(raised.value)
    # Refused before the pretraining or any member started: nothing written.
    assert not (tmp_path / "run" / "pretrain").exists() and not (tmp_path / "run" / "members").exists()


@pytest.mark.parametrize("options", [{"keep": "best"}, {"train_on_val": True}, {}])
def test_records_with_a_val_split_pass_the_check_whatever_the_run_keeps(records, options):
    config = tiny_config(records, "unused", **options)
    fingerprint = data_fingerprint(records, 64)
    assert fingerprint["images"]["val"] == 0
    check_val_split(config, {**fingerprint, "images": {**fingerprint["images"], "val": 3}})


def test_the_default_trains_without_val_records_on_every_train_image(records, tmp_path):
    config = tiny_config(records, tmp_path / "run", members=2, pretrain="simclr", pretrain_epochs=1)
    result = train(config, verbose=0)
    run = RunDir(tmp_path / "run")
    assert result.epochs_completed == 2 and run.model.is_file()
    # The pretraining read the train images only (there are no val ones); the test images stay out.
    assert json.loads(run.encoder_key.read_text())["images"] == NO_VAL["train"]
    for index in range(2):
        history = read_history(run.member(index).path / "history.csv")
        assert [row["epoch"] for row in history] == [0, 1]
        assert all(math.isnan(row["val_loss"]) and math.isfinite(row["loss"]) for row in history)
    single, _ = resolve(tiny_config(records, tmp_path / "single"), 0)
    train_data, val_data, steps, left_out = make_datasets(single, data_fingerprint(records, 64), 1, 1, 1)
    assert val_data is None and left_out == 0 and steps == NO_VAL["train"] // 8


@pytest.mark.parametrize("value, expected", [("0.25", 0.25), ("NA", math.nan), ("", math.nan), (None, math.nan)])
def test_history_values_written_as_na_read_as_nan(tmp_path, value, expected):
    """workspace.read_history, which training and the run report share (None: a history without the column)."""
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.5\n" if value is None else f"epoch,loss,val_loss\n0,0.5,{value}\n")
    read = read_history(path)[0].get("val_loss", math.nan)  # as the report's model section looks it up
    assert read == expected or (math.isnan(read) and math.isnan(expected))


run_tool = partial(run_documented_tool, salt="no-val-test")


@pytest.mark.slow
def test_every_real_nih_film_trains_a_model_that_scores_other_records(tmp_path):
    """The documented flow for a final model on real radiographs with no film held out: records with
    --split-fractions 1 0 0, the CPU default (a member kept at its last epoch), then evaluate.py on records
    made with --split test (here the same films: the flow and the report are checked, not the AUC)."""
    if not (NIH / "labels.csv").is_file():
        pytest.skip(f"NIH data not found at {NIH} (../shared/data is absent on a fresh clone)")
    dataset = tmp_path / "nih"
    dataset.mkdir()
    (dataset / "images").symlink_to(NIH / "images")
    lines = (NIH / "labels.csv").read_text().splitlines()
    (dataset / "labels.csv").write_text("\n".join(lines[:121]) + "\n")  # 120 films of either label
    run_tool("make_manifest.py", "nih", str(dataset), "--out", "all", cwd=tmp_path)
    run_tool("make_tfrecords.py", "--manifest", "all/manifest.csv", "--out", "all/records", "--sizes", "64",
             "--split-fractions", "1", "0", "0", "--no-progress", cwd=tmp_path)
    trained = run_tool("train.py", "--records", "all/records", "--size", "64", "--members", "1", "--epochs", "2",
                       "--pretrain-epochs", "1", "--run-dir", "run", "--verbose", "0", cwd=tmp_path)
    assert "120 train images at 64 px" in trained.stdout and "no test split" in trained.stderr
    assert "Pretraining the small_cnn on the train images without their labels" in trained.stdout
    assert json.loads(RunDir(tmp_path / "run").encoder_key.read_text())["images"] == 120
    run_tool("make_manifest.py", "nih", str(dataset), "--out", "scored", "--split", "test", cwd=tmp_path)
    run_tool("make_tfrecords.py", "--manifest", "scored/manifest.csv", "--out", "scored/records", "--sizes", "64",
             "--no-progress", cwd=tmp_path)
    # Scored in the run folder (its only evaluation), so the run's report is written from its NA-only val history.
    run_tool("evaluate.py", "--size", "64", "--run-dir", "run", "--records", "scored/records", "--n-boot", "1000",
             cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_images"] == 120 and metrics["metrics"]["auc_combined"]["estimate"] is not None
    assert "2 epochs run; best validation loss n/a" in (tmp_path / "run" / "report.md").read_text()
