"""A workspace moved whole (or mounted elsewhere) is the same run: run-relative paths, resume after a move."""

import json
import shutil

import pytest

from archives import heart_records
from bnp_cxr.evaluation.evaluate import evaluate_run, read_run_config
from bnp_cxr.training import make_config, train
from bnp_cxr.training.config import TrainConfig, identity_mismatches
from bnp_cxr.training.run_paths import rebased, rebased_json, run_relative
from bnp_cxr.workspace import RunDir

SIZE = 64
SPLITS = {"train": 12, "val": 4, "test": 4}


def config_under(root: str, **options) -> TrainConfig:
    """A config whose records, weights and extra images sit beside its run folder under root."""
    paths = {"records_dir": f"{root}/records", "run_dir": f"{root}/runs/r", "pretrain": "simclr",
             "weights": f"{root}/runs/r/pretrain/e.keras", "pretrain_extra": (f"{root}/unlabelled",)}
    return TrainConfig(**{**paths, **options})


@pytest.mark.parametrize("current, mismatches", [
    (config_under("/mnt/b/ws"), []),  # the whole workspace elsewhere
    (config_under("/a/ws", records_dir="/data/records"), ["records_dir"]),  # other records, same run folder
    (config_under("/mnt/b/ws", records_dir="/a/ws/records"), []),  # the run moved, its records stayed
    (config_under("/mnt/b/ws", pretrain_extra=("/mnt/b/ws/other",)), ["pretrain_extra"]),
    (config_under("/mnt/b/ws", weights="/mnt/b/ws/runs/other/pretrain/e.keras"), ["weights"]),
    (config_under("/mnt/b/ws", lr=0.01), ["lr"]),
])
def test_identity_compares_paths_as_they_are_or_relative_to_the_run(current, mismatches):
    found = identity_mismatches(config_under("/a/ws"), current)
    assert [line.split(":")[0] for line in found] == mismatches


def test_run_relative_is_lexical_and_keeps_what_is_not_a_path():
    relative = run_relative(config_under("/a/ws"))
    assert (relative.run_dir, relative.records_dir, relative.weights, relative.pretrain_extra) == (
        ".", "../../records", "pretrain/e.keras", ("../../unlabelled",))
    assert run_relative(TrainConfig(run_dir="/a/r", weights="imagenet")).weights == "imagenet"
    assert run_relative(TrainConfig(run_dir="/a/r", weights=None)).weights is None


def test_rebased_moves_each_path_that_exists_beside_the_new_run_folder(tmp_path):
    (tmp_path / "ws" / "records").mkdir(parents=True)  # moved with the run; "unlabelled" and the weights were not
    saved = config_under("/gone/ws")
    moved = rebased(saved, tmp_path / "ws" / "runs" / "r")
    assert (moved.records_dir, moved.weights, moved.pretrain_extra) == (
        str(tmp_path / "ws" / "records"), saved.weights, saved.pretrain_extra)
    assert moved.run_dir == saved.run_dir  # the caller's options give the run folder
    assert rebased(saved, "/gone/ws/runs/r") is saved


def test_a_moved_run_folder_reads_its_config_with_the_paths_that_moved_with_it(tmp_path):
    (tmp_path / "ws" / "records").mkdir(parents=True)
    run = tmp_path / "ws" / "runs" / "r"
    run.mkdir(parents=True)
    saved = config_under("/gone/ws", size=SIZE).to_json()
    (run / "config.json").write_text(json.dumps(saved))
    read = read_run_config(run)
    assert (read["records_dir"], read["weights"], read["pretrain_extra"]) == (
        str(tmp_path / "ws" / "records"), saved["weights"], saved["pretrain_extra"])
    assert rebased_json(saved, "/gone/ws/runs/r") is saved
    assert rebased_json({**saved, "run_dir": None}, run) == {**saved, "run_dir": None}


def test_a_pretrained_ensemble_resumes_after_its_workspace_moved(tmp_path):
    """Train with the CPU recipe's pretraining and two members, move the folder, resume with more epochs."""
    workspace, archive = tmp_path / "ws", tmp_path / "archive"
    archive.mkdir()
    (workspace / "records").mkdir(parents=True)
    records = heart_records(archive, workspace / "records", SPLITS, (SIZE,),
                            severities=lambda rng, count: rng.random(count), seed=5, bnp_on=lambda index: True,
                            bnpp_on=lambda index: True)
    options = {"records_dir": str(records), "size": SIZE, "backbone": "small_cnn", "epochs": 1, "batch_size": 8,
               "run_dir": str(workspace / "runs" / "run"), "shuffle_buffer": 16, "members": 2, "pretrain_epochs": 1}
    train(make_config(options), verbose=0, log=lambda _: None)
    moved = tmp_path / "moved"
    shutil.move(workspace, moved)
    run = RunDir(moved / "runs" / "run")
    evaluate_run(run.path, n_boot=1000)  # the test records from config.json, found where they moved
    assert run.predictions.is_file()
    lines = []  # only the run folder and the new length: the rest comes from its config.json, rebased
    result = train(make_config({"run_dir": str(run.path), "size": SIZE, "epochs": 2}, resume=True), verbose=0,
                   log=lines.append)
    assert result.epochs_completed == 2
    assert any(line.startswith("Pretrained encoder reused") for line in lines)
    saved = json.loads(run.config.read_text())
    assert saved["records_dir"] == str(moved / "records") and saved["weights"] == str(run.encoder)
    for k in range(2):
        member = json.loads(run.member(k).config.read_text())
        assert member["weights"] == str(run.encoder) and [s["resumed"] for s in member["sessions"]] == [False, True]
