"""The NLM TB sets' layouts (bnp_cxr.data.sources.nlm_tb): NLM's release (CXR_png/<id>_<tb>.png) for Shenzhen and
Montgomery, and an index.csv without masks; on small fixtures and on the real Shenzhen radiographs."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bnp_cxr.data.manifest import load_manifest
from bnp_cxr.data.sources import SOURCES
from bnp_cxr.data.sources.nlm_tb import FINDING_COLUMNS, MANIFEST_COLUMNS, RELEASE_IMAGE_DIR

REPO = Path(__file__).resolve().parents[1]
SHENZHEN = REPO.parent / "shared" / "data" / "lungs" / "shenzhen"
LABELS = (1, 0, 0, 1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = np.clip(np.linspace(20, 230, 48)[None, :] + rng.normal(0, 5, (48, 48)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image)


def release(root: Path, prefix: str, in_cxr_png: bool = True, extras: tuple[str, ...] = ()) -> Path:
    """An NLM release-shaped folder: labelled PNGs (in CXR_png/ or at the top), ClinicalReadings/, extra files."""
    images = root / RELEASE_IMAGE_DIR if in_cxr_png else root
    images.mkdir(parents=True)
    (root / "ClinicalReadings").mkdir()
    for number, tb in enumerate(LABELS, start=1):
        write_png(images / f"{prefix}_{number:04d}_{tb}.png", number)
        (root / "ClinicalReadings" / f"{prefix}_{number:04d}_{tb}.txt").write_text("Patient's Sex: F\nnormal\n")
    for name in extras:
        (images / name).write_bytes(b"\x00" * 8)
    return root


@pytest.mark.parametrize("source, prefix", [("shenzhen", "CHNCXR"), ("montgomery", "MCUCXR")])
@pytest.mark.parametrize("in_cxr_png", [True, False])
def test_release_labels_come_from_the_file_names(tmp_path, source, prefix, in_cxr_png):
    dataset = release(tmp_path / "set", prefix, in_cxr_png)
    result = SOURCES[source](dataset, tmp_path / "out")
    rows = read_rows(result.manifest)
    assert list(rows[0]) == [*MANIFEST_COLUMNS, *FINDING_COLUMNS] and result.n_rejected == 0
    assert [(row["patient_id"], row["tb"]) for row in rows] == [
        (f"{prefix}_{number:04d}_{tb}", str(tb)) for number, tb in enumerate(LABELS, start=1)]
    folder = f"{RELEASE_IMAGE_DIR}/" if in_cxr_png else ""
    assert [row["image_path"] for row in rows] == [f"{source}/{folder}{row['patient_id']}.png" for row in rows]
    assert all(row["lung_mask_path"] == "" for row in rows)
    manifest = load_manifest(result.manifest)
    assert manifest.rejects == [] and [row.positive for row in manifest.rows] == list(LABELS)


@pytest.mark.parametrize("name, reason", [("MCUCXR_0099.png", "unknown_label"), ("MCUCXR_0098_2.png", "unknown_label"),
                                          ("Thumbs.db", "not_an_image"), ("MCUCXR_0097_1.jpg", "not_an_image")])
def test_release_files_without_a_label_are_rejected_and_the_rest_go_on(tmp_path, name, reason):
    result = SOURCES["montgomery"](release(tmp_path / "set", "MCUCXR", extras=(name,)), tmp_path / "out")
    assert result.n_rows == len(LABELS) and result.n_rejected == 1
    [reject] = read_rows(result.rejects)
    assert (reject["source"], reject["image_path"], reject["reason"]) == ("CXR_png/", f"CXR_png/{name}", reason)
    assert name in reject["detail"] and reject["stage"] == "source"


def test_an_index_takes_precedence_and_needs_no_mask_column(tmp_path):
    dataset = release(tmp_path / "set", "MCUCXR")
    lines = [f"MCUCXR_{n:04d}_{tb},{RELEASE_IMAGE_DIR}/MCUCXR_{n:04d}_{tb}.png,{1 - tb}"
             for n, tb in enumerate(LABELS, start=1)]
    (dataset / "index.csv").write_text("id,image,tb\n" + "\n".join(lines) + "\n")
    rows = read_rows(SOURCES["montgomery"](dataset, tmp_path / "out").manifest)
    # The index's labels (here the opposite of the file names') are the ones used.
    assert [row["tb"] for row in rows] == [str(1 - tb) for tb in LABELS]
    assert all(row["lung_mask_path"] == "" for row in rows)


def test_a_folder_with_neither_layout_is_refused(tmp_path):
    (tmp_path / "set").mkdir()
    write_png(tmp_path / "set" / "unlabelled.png", 0)
    with pytest.raises(FileNotFoundError, match="index.csv not found.*CXR_png"):
        SOURCES["shenzhen"](tmp_path / "set", tmp_path / "out")


@pytest.mark.skipif(not SHENZHEN.is_dir(), reason="../shared/data/lungs/shenzhen is absent (a user's clone)")
def test_real_shenzhen_files_in_the_release_layout_give_the_index_labels(tmp_path):
    """The 566 shared radiographs, linked as NLM's release names them, through tools/make_manifest.py."""
    index = {row["id"]: row for row in read_rows(SHENZHEN / "index.csv")}
    images = tmp_path / "ChinaSet_AllFiles" / RELEASE_IMAGE_DIR
    images.mkdir(parents=True)
    for row in index.values():
        (images / Path(row["image"]).name).symlink_to(SHENZHEN / row["image"])
    done = subprocess.run([sys.executable, str(REPO / "tools" / "make_manifest.py"), "shenzhen",
                           str(images.parent), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert f"{len(index)} rows" in done.stdout and "0 rejected" in done.stdout
    rows = read_rows(tmp_path / "out" / "manifest.csv")
    assert {row["patient_id"]: row["tb"] for row in rows} == {key: row["tb"] for key, row in index.items()}
    manifest = load_manifest(tmp_path / "out" / "manifest.csv")
    assert manifest.rejects == [] and sum(row.positive for row in manifest.rows) == sum(
        int(row["tb"]) for row in index.values())


@pytest.mark.parametrize("split", ["test", "train", None])
def test_split_puts_every_row_in_one_split(tmp_path, split):
    result = SOURCES["montgomery"](release(tmp_path / "set", "MCUCXR"), tmp_path / "out", split=split)
    rows = read_rows(result.manifest)
    assert ("split" in rows[0]) == (split is not None)
    manifest = load_manifest(result.manifest)
    expected = {split} if split else {"train", "val", "test"}  # None: the hashed patient split
    assert manifest.rejects == [] and {row.split for row in manifest.rows} <= expected


def test_an_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        SOURCES["shenzhen"](release(tmp_path / "set", "CHNCXR"), tmp_path / "out", split="holdout")


@pytest.mark.parametrize("with_masks, rejected", [(True, 1), (False, 0)])
def test_a_missing_mask_rejects_its_row_unless_masks_are_left_out(tmp_path, with_masks, rejected):
    dataset = release(tmp_path / "set", "CHNCXR")
    lines = [f"CHNCXR_{n:04d}_{tb},{RELEASE_IMAGE_DIR}/CHNCXR_{n:04d}_{tb}.png,{tb},masks/absent_{n}.png"
             for n, tb in enumerate(LABELS[:1], start=1)]
    (dataset / "index.csv").write_text("id,image,tb,mask\n" + "\n".join(lines) + "\n")
    result = SOURCES["shenzhen"](dataset, tmp_path / "out", with_masks=with_masks)
    assert (result.n_rows, result.n_rejected) == (1 - rejected, rejected)
    if rejected:
        assert read_rows(result.rejects)[0]["reason"] == "missing_mask"
