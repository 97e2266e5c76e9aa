"""Other radiographs in the pretraining (TrainConfig.pretrain_extra, --pretrain-extra): every split of each extra
records folder joins the run's train and val images, without this run's test patients, and the encoder's key
changes with them."""

import dataclasses
import json

import cv2
import numpy as np
import pytest

from archives import heart_records
from bnp_cxr.training import make_config, resolve, train
from bnp_cxr.training.pretrain import ensure_encoder, extra_images, unlabelled_images
from bnp_cxr.workspace import RunDir

SIZE = 64
SPLITS = {"train": 10, "val": 4, "test": 4}  # patients P0-P9, P10-P13 and P14-P17 (heart_records: one per image)


def records_of(tmp_path_factory, name: str, splits: dict[str, int], seed: int):
    return heart_records(tmp_path_factory.mktemp(f"{name}_archive"), tmp_path_factory.mktemp(f"{name}_records"),
                         splits, (SIZE,), severities=lambda rng, count: rng.random(count), seed=seed,
                         bnp_on=lambda index: True, bnpp_on=lambda index: True)


@pytest.fixture(scope="module")
def records(tmp_path_factory, site_salt):  # one site salt for every records folder here: patient keys match
    return records_of(tmp_path_factory, "run", SPLITS, seed=4)


@pytest.fixture(scope="module")
def other(tmp_path_factory, site_salt):
    """Another archive whose patients P0-P17 include this run's four test patients (P14-P17), in two splits."""
    return records_of(tmp_path_factory, "other", {"train": 12, "val": 6}, seed=5)


def run_config(records, run_dir, **options):
    base = {"records_dir": str(records), "size": SIZE, "backbone": "small_cnn", "epochs": 1, "batch_size": 8,
            "run_dir": str(run_dir), "shuffle_buffer": 16, "members": 1, "pretrain_epochs": 1, "model_px": 32,
            "widths": (8, 16), "mixed_precision": "off"}
    return resolve(make_config({**base, **options}), 0)[0]


def test_extra_images_leave_out_this_runs_test_patients(records, other, tmp_path):
    config = run_config(records, tmp_path / "run", pretrain_extra=(str(other),))
    images, counts = extra_images(config)
    assert counts == [{"records_dir": str(other), "images": 14, "left_out_test_patients": 4}]
    assert images.shape == (14, SIZE, SIZE, 1)
    assert len(unlabelled_images(config)) == SPLITS["train"] + SPLITS["val"]  # the run's own images, unchanged
    # Two folders: each is counted on its own
    twice = run_config(records, tmp_path / "run", pretrain_extra=(str(other), str(other)))
    assert [count["images"] for count in extra_images(twice)[1]] == [14, 14]


def test_a_run_without_a_test_split_keeps_every_extra_image(other, tmp_path_factory, tmp_path):
    no_test = records_of(tmp_path_factory, "no_test", {"train": 6, "val": 2}, seed=6)
    images, counts = extra_images(run_config(no_test, tmp_path / "run", pretrain_extra=(str(other),)))
    assert len(images) == 18 and counts[0]["left_out_test_patients"] == 0


@pytest.mark.parametrize("case, error, message", [
    ("own", ValueError, "is this run's own records folder"),
    ("empty", FileNotFoundError, "no train records at 64 px in"),
    ("other_size", FileNotFoundError, "run tools/make_tfrecords.py --sizes 64"),
])
def test_unusable_extra_folders_are_refused(records, tmp_path, tmp_path_factory, case, error, message):
    (tmp_path / "archive").mkdir()
    folder = {"own": records, "empty": tmp_path / "empty",
              "other_size": heart_records(tmp_path / "archive", tmp_path / "records128", {"train": 2}, (128,),
                                          severities=lambda rng, count: rng.random(count), seed=1,
                                          bnp_on=lambda index: True, bnpp_on=lambda index: True)
              if case == "other_size" else None}[case]
    (tmp_path / "empty").mkdir(exist_ok=True)
    with pytest.raises(error, match=message):
        extra_images(run_config(records, tmp_path / "run", pretrain_extra=(str(folder),)))


def test_extra_images_need_pretraining(records, tmp_path):
    with pytest.raises(ValueError, match="pretrain_extra adds images to the pretraining: it needs pretrain simclr"):
        make_config({"records_dir": str(records), "pretrain": "none", "pretrain_extra": (str(records),)})
    # A recipe that resolves to no pretraining (a GPU backbone, --weights, several workers) says so, never drops them
    for options, gpus, workers, why in [({"backbone": "resnet50"}, 1, 1, "recipe on 1 worker"),
                                        ({"weights": "start.keras"}, 0, 1, "run starts from --weights"),
                                        ({}, 0, 2, "recipe on 2 worker")]:
        config = make_config({"records_dir": str(records), "pretrain_extra": ("other",), **options})
        with pytest.raises(ValueError, match=f"pretraining this run does not do .*{why}.*--pretrain simclr"):
            resolve(config, gpus, workers)
    assert resolve(make_config({"records_dir": str(records), "backbone": "resnet50", "pretrain": "simclr",
                                "pretrain_extra": ("other",)}), 1)[0].pretrain == "simclr"


def test_a_run_pretrains_on_the_extra_images_from_the_command_line(records, other, tmp_path):
    from bnp_cxr.cli.train import build_parser
    from bnp_cxr.training.arguments import training_options

    args = build_parser().parse_args(["--records", str(records), "--run-dir", str(tmp_path / "run"), "--size", "64",
                                      "--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8",
                                      "--mixed-precision", "off", "--members", "1", "--model-px", "32",
                                      "--widths", "8", "16", "--pretrain-epochs", "1", "--pretrain-extra", str(other)])
    lines = []
    result = train(make_config(training_options(args)), verbose=0, log=lines.append)
    run = RunDir(result.run_dir)
    summary = json.loads(run.encoder_key.read_text())
    assert summary["images"] == SPLITS["train"] + SPLITS["val"] + 14
    assert summary["extra"] == [{"records_dir": str(other), "images": 14, "left_out_test_patients": 4}]
    assert len(summary["key"]["extra_sha256"]) == 1
    assert any("14 from 1 other records folders (4 images of this run's test patients left out)" in line
               for line in lines)
    assert json.loads(run.config.read_text())["pretrain_extra"] == [str(other)]
    # Without the extra folder the key differs, so the same run folder pretrains again instead of reusing it
    alone = dataclasses.replace(result.config, pretrain_extra=())
    lines.clear()
    ensure_encoder(alone, {"sha256": summary["key"]["data_sha256"]}, log=lines.append)
    assert lines and lines[0].startswith("Pretraining the small_cnn")
    assert "extra_sha256" not in json.loads(run.encoder_key.read_text())["key"]


def test_an_archive_without_labs_joins_the_pretraining_but_cannot_train(records, tmp_path, capsys):
    from bnp_cxr.cli.make_tfrecords import main as make_tfrecords

    archive = tmp_path / "archive"
    archive.mkdir()
    lines = ["patient_id,image_path,study_datetime,split"]
    for index, patient in enumerate(["A1", "A2", "A3", "A4", "P14"]):  # P14: one of the run's test patients
        image = np.random.default_rng(index).normal(20000, 1500, (96, 80)).clip(0, 65535).astype(np.uint16)
        cv2.imwrite(str(archive / f"film{index}.png"), image)
        lines.append(f"{patient},film{index}.png,2021-04-0{index + 1},train")
    (archive / "manifest.csv").write_text("\n".join(lines) + "\n")
    common = ["--manifest", str(archive / "manifest.csv"), "--sizes", str(SIZE), "--workers", "0", "--no-progress"]
    assert make_tfrecords([*common, "--out", str(tmp_path / "labelled")]) == 2  # a labelled manifest needs its labs
    assert "missing required column(s) ['bnp', 'bnpp']" in capsys.readouterr().err
    assert make_tfrecords([*common, "--out", str(tmp_path / "films"), "--unlabelled"]) == 0
    summary = json.loads((tmp_path / "films" / "summary.json").read_text())
    assert summary["per_split"]["train"] == {"written": 5, "unknown": 5, "no_lab": 5} and summary["rejected"] == 0
    images, counts = extra_images(run_config(records, tmp_path / "run", pretrain_extra=(str(tmp_path / "films"),)))
    assert len(images) == 4 and counts[0]["left_out_test_patients"] == 1
    with pytest.raises(ValueError, match="have no BNP or BNPP .* --unlabelled.*--pretrain-extra"):
        train(make_config({"records_dir": str(tmp_path / "films"), "size": SIZE, "backbone": "small_cnn",
                           "run_dir": str(tmp_path / "films_run"), "pretrain": "none", "members": 1}),
              verbose=0, log=lambda _: None)
