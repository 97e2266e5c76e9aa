"""The NIH ChestX-ray14 source (bnp_cxr.data.sources.nih): both layouts, stand-in labs, findings, rejects."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bnp_cxr.cli import make_manifest
from bnp_cxr.data.manifest import load_manifest
from bnp_cxr.data.sources import SOURCES
from bnp_cxr.data.sources.nih import FINDING_COLUMNS, MANIFEST_COLUMNS, write_nih_manifest

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"
SUBSET_HEADER = ("image,patient_id,view,age,sex,finding_labels,cardiomegaly,edema,effusion,consolidation,no_finding,"
                 "source")
RELEASE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# (image, patient, view, findings, heart-failure stand-in positive)
GOOD = [("00000001_000.png", "1", "PA", "No Finding", 0), ("00000001_001.png", "1", "AP", "Cardiomegaly|Effusion", 1),
        ("00000002_000.png", "2", "PA", "Edema", 1), ("00000003_000.png", "3", "AP", "Infiltration|Pneumonia", 0)]


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 32), 128, np.uint8))


def subset_line(image: str, patient: str, view: str, findings: str) -> str:
    names = findings.split("|")
    flags = [int(name in names) for name in ("Cardiomegaly", "Edema", "Effusion", "Consolidation", "No Finding")]
    return f"{image},{patient},{view},50,M,{findings},{','.join(map(str, flags))},test"


def release_line(image: str, patient: str, view: str, findings: str) -> str:
    return f'{image},{findings},0,{patient},50,M,{view},"2500,2048","0.143,0.143"'


def make_dataset(root: Path, layout: str, extra: list[str] = ()) -> Path:
    """A ChestX-ray14-shaped folder: the subset's labels.csv + images/, or the release's Data_Entry + images_001/."""
    image_dir = root / ("images" if layout == "subset" else "images_001/images")
    for image, *_ in GOOD:
        write_png(image_dir / image)
    line, header, name = ((subset_line, SUBSET_HEADER, "labels.csv") if layout == "subset"
                          else (release_line, RELEASE_HEADER, "Data_Entry_2017_v2020.csv"))
    lines = [line(*row[:4]) for row in GOOD] + list(extra)
    (root / name).write_text(header + "\n" + "".join(f"{text}\n" for text in lines))
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("layout", ["subset", "release"])
def test_both_layouts_give_the_same_manifest_with_stand_in_labs_and_findings(tmp_path, layout):
    result = write_nih_manifest(make_dataset(tmp_path / "nih", layout), tmp_path / "out")
    rows = read_rows(result.manifest)
    assert list(rows[0]) == [*MANIFEST_COLUMNS, *FINDING_COLUMNS] and result.n_rejected == 0
    assert [row["patient_id"] for row in rows] == [patient for _, patient, *_ in GOOD]
    assert [row["view"] for row in rows] == [view for _, _, view, *_ in GOOD]
    assert [row["bnpp"] for row in rows] == ["2000" if positive else "100" for *_, positive in GOOD]
    assert [row["bnp"] for row in rows] == ["500" if positive else "30" for *_, positive in GOOD]
    assert [(row["cardiomegaly"], row["effusion"], row["edema"], row["no_finding"]) for row in rows] == [
        ("0", "0", "0", "1"), ("1", "1", "0", "0"), ("0", "0", "1", "0"), ("0", "0", "0", "0")]
    manifest = load_manifest(result.manifest)
    assert manifest.rejects == [] and [row.positive for row in manifest.rows] == [p for *_, p in GOOD]


BAD = [  # (subset line, reason, column)
    (subset_line("00000009_000.png", "9", "PA", "Cardiomegaly"), "missing_image", "image"),
    (subset_line("00000001_000.png", "1", "PA", "No Finding"), "duplicate_image", "image"),
    (subset_line("00000004_000.png", "4", "LL", "No Finding"), "non_frontal_view", "view"),
    (subset_line("00000004_000.png", "4", "", "No Finding"), "non_frontal_view", "view"),
    (subset_line("00000004_000.png", "", "PA", "No Finding"), "missing_patient_id", "patient_id"),
    (subset_line("00000004_000.png", "4", "PA", "Heart_Failure"), "unknown_finding", "finding_labels"),
    (subset_line("00000004_000.png", "4", "PA", ""), "unknown_finding", "finding_labels"),
    (subset_line("00000004_000.png", "4", "PA", "No Finding|Edema"), "unknown_finding", "finding_labels"),
    ("00000004_000.png,4,PA,50,M,Edema,0,0,0,0,0,test", "conflicting_finding", "finding_labels"),
]


@pytest.mark.parametrize("line, reason, column", BAD)
def test_bad_rows_are_rejected_with_a_reason_and_the_rest_go_on(tmp_path, line, reason, column):
    root = make_dataset(tmp_path / "nih", "subset", [line])
    write_png(root / "images" / "00000004_000.png")
    result = write_nih_manifest(root, tmp_path / "out")
    assert result.n_rows == len(GOOD) and result.n_rejected == 1
    [reject] = read_rows(result.rejects)
    assert (reject["source"], reject["row"], reject["stage"], reject["reason"], reject["column"]) == (
        "labels.csv", str(len(GOOD) + 2), "source", reason, column)
    assert reject["detail"]


@pytest.mark.parametrize("header, error, match", [
    ("image,patient_id,view\n", ValueError, r"missing column\(s\) \['finding_labels'\]"),
    (None, FileNotFoundError, "Data_Entry_2017"),
])
def test_unusable_label_files_are_refused_with_the_file_named(tmp_path, header, error, match):
    (tmp_path / "nih").mkdir()
    if header is not None:
        (tmp_path / "nih" / "labels.csv").write_text(header)
        match = "labels.csv: " + match
    with pytest.raises(error, match=match):
        write_nih_manifest(tmp_path / "nih", tmp_path / "out")


def test_cli_writes_the_manifest_and_reports_counts(tmp_path, capsys):
    root = make_dataset(tmp_path / "nih", "release", [release_line("x.png", "7", "AP", "Edema")])
    assert make_manifest.main(["nih", str(root), "--out", str(tmp_path / "out"), "--bnpp-only"]) == 0
    out = capsys.readouterr().out
    assert f"{len(GOOD)} rows" in out and "1 rejected" in out
    assert {row["bnp"] for row in read_rows(tmp_path / "out" / "manifest.csv")} == {""}
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["labs"] == "stand-in"
    assert make_manifest.main(["nih", str(tmp_path / "absent"), "--out", str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


def test_sources_share_one_interface():
    assert set(SOURCES) >= {"nih", "shenzhen"} and SOURCES["nih"] is write_nih_manifest


def test_the_shared_nih_subset_maps_every_row(tmp_path):
    if not (NIH / "labels.csv").is_file():
        pytest.skip(f"NIH subset not found at {NIH} (../shared/data is absent on a fresh clone)")
    result = write_nih_manifest(NIH, tmp_path / "out")
    rows = read_rows(result.manifest)
    # ../shared/data/README.md: 1,124 images of 897 patients, 206 with a heart-failure sign.
    assert (result.n_rows, result.n_rejected) == (1124, 0)
    assert len({row["patient_id"] for row in rows}) == 897
    assert sum(row["bnpp"] == "2000" for row in rows) == 206
    assert [sum(row[name] == "1" for row in rows) for name in ("cardiomegaly", "edema", "effusion")] == [47, 81, 115]
