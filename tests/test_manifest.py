"""Manifest validation: row/column-specific rejects, labels, pairing and patient-level splits."""

import math
import pickle
from collections import defaultdict

import pytest

from bnp_cxr.data.manifest import ManifestConfig, ManifestError, SplitConfig, load_manifest
from bnp_cxr.rejects import REJECT_FIELDS, Reject, rejects_csv

HEADER = "patient_id,image_path,study_datetime,bnp,bnpp,view,split\n"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        (tmp_path / "img" / name).write_bytes(b"not decoded at this stage")
    (tmp_path / "outside.png").write_bytes(b"x")
    return tmp_path


def write(folder, body, header=HEADER, name="manifest.csv"):
    path = folder / "sub" / name if "sub" in name else folder / name
    path.write_text(header + body)
    return path


def rejects_by_row(manifest):
    return {r.row: (r.column, r.reason) for r in manifest.rejects}


@pytest.mark.parametrize("line, column, reason", [
    (",img/a.png,2020-01-01,50,,PA,", "patient_id", "missing_patient_id"),
    ("P1,,2020-01-01,50,,PA,", "image_path", "missing_path"),
    ("P1,img/zzz.png,2020-01-01,50,,PA,", "image_path", "file_not_found"),
    ("P1,../../etc/passwd,2020-01-01,50,,PA,", "image_path", "path_outside_root"),
    ("P1,/etc/passwd,2020-01-01,50,,PA,", "image_path", "absolute_path"),
    ("P1,img/a.png,someday,50,,PA,", "study_datetime", "bad_datetime"),
    ("P1,img/a.png,2020-01-01,abc,,PA,", "bnp", "bad_lab_value"),
    ("P1,img/a.png,2020-01-01,,-3,PA,", "bnpp", "bad_lab_value"),
    ("P1,img/a.png,2020-01-01,,,PA,", "bnp,bnpp", "no_label"),
    ("P1,img/a.png,2020-01-01,50,,LL,", "view", "lateral_view"),
    ("P1,img/a.png,2020-01-01,50,,PA,holdout", "split", "bad_split"),
])
def test_bad_rows_are_rejected_with_row_and_column(folder, line, column, reason):
    manifest = load_manifest(write(folder, "P0,img/b.png,2020-01-01,50,,PA,\n" + line + "\n"))
    assert manifest.n_rows == 2
    assert [row.row for row in manifest.rows] == [2]
    assert rejects_by_row(manifest) == {3: (column, reason)}
    assert manifest.rejects[0].detail  # a human-readable reason


def test_duplicate_row_names_the_first(folder):
    manifest = load_manifest(write(folder, "P1,img/a.png,2020-01-01,50,,,\nP1,./img//a.png,2020-01-01,50,,,\n"))
    assert rejects_by_row(manifest) == {3: ("image_path", "duplicate_row")}
    assert "row 2" in manifest.rejects[0].detail


def test_windows_separators_and_lateral_allowed(folder):
    body = "P1,img\\a.png,2020-01-01,50,,LATERAL,\n"
    assert load_manifest(write(folder, body)).rejects[0].reason == "lateral_view"
    manifest = load_manifest(write(folder, body), config=ManifestConfig(allow_lateral=True))
    assert manifest.rows[0].image_path == "img/a.png" and not manifest.rejects


@pytest.mark.parametrize("header, line, written", [
    (HEADER, "P1,img/a.png,2020-01-01,,,PA,", (math.nan, math.nan)),  # empty lab cells
    ("patient_id,image_path,study_datetime,view\n", "P1,img/a.png,2020-01-01,PA", (math.nan, math.nan)),  # no columns
    (HEADER, "P1,img/a.png,2020-01-01,50,,PA,", (50.0, math.nan)),  # a labelled row stays as it was
])
def test_an_unlabelled_archive_keeps_rows_without_labs(folder, header, line, written):
    manifest = load_manifest(write(folder, line + "\n", header=header), config=ManifestConfig(keep_unlabelled=True))
    assert not manifest.rejects and len(manifest.rows) == 1
    row = manifest.rows[0]
    assert (row.bnp_pg_ml, row.bnpp_pg_ml) == pytest.approx(written, nan_ok=True)
    assert row.positive == (1 if written[0] > 100 else -1 if math.isnan(written[0]) else 0)


def test_labels_and_pseudonyms(folder):
    manifest = load_manifest(write(folder, "MRN123,img/a.png,2020-01-01,<10,>35000,PA,\n"),
                             config=ManifestConfig(salt="site-secret"))
    row = manifest.rows[0]
    assert (row.bnp_pg_ml, row.bnp_censored, row.bnpp_pg_ml, row.bnpp_censored) == (10.0, -1, 35000.0, 1)
    assert row.log10_bnpp == pytest.approx(math.log10(35000))
    assert row.positive == 1
    assert "MRN123" not in row.patient_key and "MRN123" not in row.image_id
    other_salt = load_manifest(write(folder, "MRN123,img/a.png,2020-01-01,<10,>35000,PA,\n"),
                               config=ManifestConfig(salt="another-secret")).rows[0]
    assert other_salt.patient_key != row.patient_key


def test_missing_columns_is_a_file_error(folder):
    with pytest.raises(ManifestError, match="missing required column"):
        load_manifest(write(folder, "P1,img/a.png\n", header="patient_id,image_path\n"))


def test_split_column_is_patient_level_and_conflicts_rejected(folder):
    body = ("P1,img/a.png,2020-01-01,50,,PA,test\n"
            "P1,img/b.png,2020-02-01,50,,PA,\n"          # follows the patient's named split
            "P2,img/c.png,2020-01-01,50,,PA,train\n"
            "P2,img/d.png,2020-02-01,50,,PA,val\n")      # conflicting: both P2 rows rejected
    manifest = load_manifest(write(folder, body))
    assert {row.image_path: row.split for row in manifest.rows} == {"img/a.png": "test", "img/b.png": "test"}
    assert rejects_by_row(manifest) == {4: ("split", "conflicting_split"), 5: ("split", "conflicting_split")}


def test_hash_split_is_deterministic_patient_level_and_near_80_10_10():
    config = SplitConfig()
    patients = [f"patient-{i}" for i in range(20000)]
    splits = [config.split_of(p) for p in patients]
    assert splits == [config.split_of(p) for p in patients]
    fractions = {name: splits.count(name) / len(splits) for name in ("train", "val", "test")}
    assert fractions["train"] == pytest.approx(0.8, abs=0.01)
    assert fractions["val"] == pytest.approx(0.1, abs=0.01)
    assert SplitConfig(key="other").split_of("patient-1") in ("train", "val", "test")


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (1.2, -0.2, 0.0), (0.5, 0.5)])
def test_split_fractions_that_are_no_split_are_refused_when_made(fractions):
    with pytest.raises(ValueError, match="split fractions"):
        SplitConfig(fractions=fractions)


def test_zero_fractions_leave_their_split_empty():
    config = SplitConfig(fractions=(0.875, 0.125, 0.0))
    assert {config.split_of(f"patient-{i}") for i in range(5000)} == {"train", "val"}


def test_no_patient_in_two_splits(folder):
    lines = [f"P{i % 7},img/{'abcde'[i % 5]}.png,2020-01-{i + 1:02d},{50 + i},,PA," for i in range(5)]
    lines += [f"P{i},x{i}.png,2020-01-01,50,,PA," for i in range(40)]
    for i in range(40):
        (folder / f"x{i}.png").write_bytes(b"x")
    manifest = load_manifest(write(folder, "\n".join(lines) + "\n"))
    splits_of = defaultdict(set)
    for row in manifest.rows:
        splits_of[row.patient_key].add(row.split)
    assert len(manifest.rows) == 45
    assert all(len(splits) == 1 for splits in splits_of.values())


def test_labs_table_pairing_and_invalid_lab_rows(folder):
    manifest_path = write(folder, "P1,img/a.png,2020-01-01T12:00,,,PA,\nP1,img/b.png,2020-03-01T12:00,,,PA,\n")
    labs_path = folder / "labs.csv"
    labs_path.write_text("patient_id,lab_datetime,test,value\n"
                         "P1,2020-01-01T10:00,BNPP,1500\n"
                         "P1,2020-03-03T12:00,BNPP,60\n"     # 48 h away: outside the default window
                         "P1,2020-01-01T11:00,BNP,oops\n")
    manifest = load_manifest(manifest_path, labs_path)
    assert [row.image_path for row in manifest.rows] == ["img/a.png"]
    assert manifest.rows[0].bnpp_pg_ml == 1500.0 and manifest.rows[0].bnpp_hours_from_study == pytest.approx(-2)
    assert {(r.source, r.row, r.reason) for r in manifest.rejects} == {
        ("labs.csv", 4, "bad_lab_row"), ("manifest.csv", 3, "no_label")}
    assert manifest.labs_summary == {"rows": 3, "invalid": 1, "paired": 1, "unused": 1, "window_hours": 24.0}
    wide = load_manifest(manifest_path, labs_path, ManifestConfig(pairing_window_hours=72))
    assert len(wide.rows) == 2


def test_labs_table_and_inline_values_conflict(folder):
    labs_path = folder / "labs.csv"
    labs_path.write_text("patient_id,lab_datetime,test,value\n")
    with pytest.raises(ManifestError, match="one source"):
        load_manifest(write(folder, "P1,img/a.png,2020-01-01,50,,PA,\n"), labs_path)


@pytest.mark.parametrize("reject, line", [
    (Reject(source="manifest.csv", row=7, image_path="img/a.png", stage="manifest", reason="bad_split",
            column="split", detail="split 'x'"), "manifest.csv,7,img/a.png,manifest,bad_split,split,split 'x'"),
    (Reject(source="labs.csv", row=3, stage="labs", reason="bad_lab_row", column="value", detail="n/a, no number"),
     'labs.csv,3,,labs,bad_lab_row,value,"n/a, no number"'),
    # Optional fields stay empty; mask_path is not a rejects.csv column.
    (Reject(image_path="Zürich.dcm", mask_path="m.png", reason="bad_mask"), ",,Zürich.dcm,,bad_mask,,"),
])
def test_rejects_csv_lines(reject, line):
    assert rejects_csv([reject]) == ",".join(REJECT_FIELDS) + "\r\n" + line + "\r\n"
    assert pickle.loads(pickle.dumps(reject)) == reject  # decode workers return rejects across processes
    with pytest.raises(TypeError):
        Reject("manifest.csv", 7, reason="x")  # keywords only: the fields are easy to swap by position


FINDINGS_HEADER = "patient_id,image_path,study_datetime,bnp,bnpp,edema,cardiomegaly,comment\n"


@pytest.mark.parametrize("cells, expected", [
    ("1,0", (("edema", 1), ("cardiomegaly", 0))),
    ("1.0,0.0", (("edema", 1), ("cardiomegaly", 0))),
    (",1", (("edema", -1), ("cardiomegaly", 1))),
    (" 0 , ", (("edema", 0), ("cardiomegaly", -1))),
])
def test_finding_columns_travel_with_the_row(folder, cells, expected):
    manifest = load_manifest(write(folder, f"P1,img/a.png,2020-01-01,50,,{cells},note\n", FINDINGS_HEADER))
    assert manifest.finding_columns == ("edema", "cardiomegaly") and manifest.rejects == []
    assert manifest.rows[0].findings == expected


@pytest.mark.parametrize("cells, column", [("-1,0", "edema"), ("1,yes", "cardiomegaly"), ("2,0", "edema")])
def test_a_bad_finding_cell_rejects_its_row_only(folder, cells, column):
    body = f"P0,img/b.png,2020-01-01,50,,1,0,\nP1,img/a.png,2020-01-01,50,,{cells},\n"
    manifest = load_manifest(write(folder, body, FINDINGS_HEADER))
    assert [row.row for row in manifest.rows] == [2]
    assert rejects_by_row(manifest) == {3: (column, "bad_finding")}


def test_the_same_image_with_different_findings_is_a_conflict(folder):
    body = "P1,img/a.png,2020-01-01,50,,1,0,\nP1,img/a.png,2020-01-01,50,,0,0,\n"
    manifest = load_manifest(write(folder, body, FINDINGS_HEADER))
    assert rejects_by_row(manifest) == {2: ("edema", "conflicting_duplicate"), 3: ("edema", "conflicting_duplicate")}


def test_a_manifest_without_finding_columns_has_none(folder):
    manifest = load_manifest(write(folder, "P1,img/a.png,2020-01-01,50,,PA,\n"))
    assert manifest.finding_columns == () and manifest.rows[0].findings == ()
