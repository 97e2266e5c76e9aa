"""MIMIC-CXR + MIMIC-IV source (issue #13) on a generated mini-MIMIC in the published schemas (tests/mimic_archive.py).

No MIMIC file is in the repository: every count of flow.json is checked against what the generator planted.
"""

import csv
import gzip
import io
import json
import math
from collections import Counter
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest
from mimic_archive import N_PATIENTS, TIE_SCENARIO, write_mini_mimic
from phi import identifier_patterns, scan_tree

from archives import run_documented_tool
from bnp_cxr.cli import make_manifest
from bnp_cxr.data.manifest import ManifestConfig, SplitConfig, load_manifest
from bnp_cxr.data.sources import SOURCES
from bnp_cxr.data.sources.mimic import schema, write_mimic_manifest
from bnp_cxr.data.sources.mimic.cxr import parse_study_datetime
from bnp_cxr.data.sources.mimic.labevents import lab_text

ROOT = Path(__file__).resolve().parents[1]
SALT = "mimic-test-site-secret"
EXCLUDED = ("lateral", "other_view", "bad_study_datetime", "duplicate_image", "missing_image")
REJECT_REASON = {"lateral": "non_frontal_view", "other_view": "non_frontal_view", "no_lab": "no_lab_in_window",
                 "bad_study_datetime": "bad_study_datetime", "duplicate_image": "duplicate_image",
                 "missing_image": "missing_image", "conflicting_split": "conflicting_split"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def build(mini, out: Path, **options):
    return write_mimic_manifest(mini.cxr, out, iv_dir=mini.iv, log=lambda _: None, **options)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_mimic(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def built(mini, tmp_path_factory):
    return build(mini, tmp_path_factory.mktemp("manifest"))


def fates(mini, official: bool = False) -> list[str]:
    """Each planted image's fate; with the official split the patient in two splits is rejected."""
    return [("conflicting_split" if official and image.subject_id == mini.conflict_subject
             and image.fate in ("with_lab", "no_lab") else image.fate) for image in mini.images]


def expected_flow(mini, official: bool = False) -> dict:
    """The flow counts the plant implies (independent of the builder's code)."""
    planted = list(zip(mini.images, fates(mini, official)))
    frontal = [image for image, fate in planted if fate in ("with_lab", "no_lab")]
    kept = [image for image, fate in planted if fate == "with_lab"]
    subjects = {image.subject_id for image in frontal}
    chosen = [lab for lab in mini.labs if lab["fate"] != "distractor"]
    mine = [lab for lab in chosen if lab["subject_id"] in subjects]

    def groups(images):
        return {"images": len(images), "studies": len({(i.subject_id, i.study_id) for i in images}),
                "patients": len({i.subject_id for i in images})}

    split_of = ((lambda i: {"validate": "val"}.get(i.official_split, i.official_split)) if official
                else (lambda i: SplitConfig().split_of(i.subject_id)))
    splits = {}
    for split in ("train", "val", "test"):
        members = [image for image in kept if split_of(image) == split]
        states = Counter(image.positivity for image in members)
        splits[split] = {**groups(members), **{name: states[name] for name in ("positive", "negative", "unknown")}}
    excluded = Counter(fate for _, fate in planted)
    return {
        "listed": groups([image for image in mini.images]),
        "excluded": {key: excluded[key] for key in (*EXCLUDED, "conflicting_split")},
        "frontal": groups(frontal), "no_lab_in_window": excluded["no_lab"],
        "labevents": {"rows_read": len(mini.labs), "chosen_items": len(chosen), "with_radiographs": len(mine),
                      "usable": dict(Counter(lab["test"] for lab in mine if lab["fate"] == "usable")),
                      "unusable": dict(Counter(lab["fate"] for lab in mine if lab["fate"] != "usable"))},
        "with_lab": {**groups(kept), "per_test": {test: sum(test in image.labs for image in kept)
                                                  for test in ("BNP", "BNPP")}},
        "splits": splits,
    }


def actual_flow(flow: dict) -> dict:
    """flow.json's counts in expected_flow's shape (unreadable_header cannot happen with the metadata CSV)."""
    excluded = {key: value for key, value in flow["excluded"].items() if key != "unreadable_header"}
    labs = {key: value for key, value in flow["labevents"].items() if key != "conflicting"}
    return {"listed": flow["listed"], "excluded": excluded, "frontal": flow["frontal"],
            "no_lab_in_window": flow["no_lab_in_window"], "labevents": labs, "with_lab": flow["with_lab"],
            "splits": flow["splits"]}


# ---------------------------------------------------------------- the traps, one function at a time

@pytest.mark.parametrize("date, time, expected", [
    ("21800506", "4512.0", datetime(2180, 5, 6, 0, 45, 12)),  # leading zeros lost
    ("21800506", "213014.531", datetime(2180, 5, 6, 21, 30, 14, 531000)),
    ("21800506", "93000", datetime(2180, 5, 6, 9, 30)),  # fraction lost
    ("21800506", "735", datetime(2180, 5, 6, 0, 7, 35)),
    ("21800506.0", "0.0", datetime(2180, 5, 6)),
    ("21800506", "004512.1234567", datetime(2180, 5, 6, 0, 45, 12, 123456)),  # DICOM TM from a header
])
def test_study_time_floats_are_read_as_times(date, time, expected):
    assert parse_study_datetime(date, time) == expected


@pytest.mark.parametrize("date, time", [("21800506", ""), ("21800506", "256100.0"), ("21800506", "1261.0"),
                                        ("2180-05-06", "120000"), ("", "120000"), ("21801306", "120000"),
                                        ("21800506", "12:00:00"), ("21800506", "1234567")])
def test_unusable_study_times_are_refused(date, time):
    with pytest.raises(ValueError, match="StudyDate"):
        parse_study_datetime(date, time)


@pytest.mark.parametrize("value, valuenum, unit, expected", [
    ("1234", "1234", "pg/mL", ("1234", "", "")),
    ("<50", "", "pg/mL", ("<50", "", "")),  # censored: the text wins, valuenum holds only the bound
    ("<50", "50", "pg/mL", ("<50", "", "")),
    (">35000", "35000", "pg/mL", (">35000", "", "")),
    ("> 35000", "", "PG/ML", (">35000", "", "")),
    ("", "880.5", "pg/mL", ("880.5", "", "")),
    ("1,234", "", "", ("1,234", "", "")),
    ("___", "", "pg/mL", ("", "deidentified_value", None)),
    ("", "", "pg/mL", ("", "empty_value", None)),
    ("HEMOLYZED", "", "", ("", "bad_value", None)),
    ("0", "0", "pg/mL", ("", "bad_value", None)),
    ("450", "450", "ng/mL", ("", "unit_not_pg_ml", None)),
])
def test_lab_values_map_to_the_censoring_rules(value, valuenum, unit, expected):
    text, reason, detail = lab_text(value, valuenum, unit)
    assert (text, reason) == expected[:2]
    assert (detail == "") == (reason == "")


# ---------------------------------------------------------------- the whole builder on the mini-MIMIC

def test_flow_counts_match_what_was_planted(mini, built):
    flow = json.loads(built.flow_json.read_text(encoding="utf-8"))
    assert flow == json.loads(json.dumps(built.flow))
    assert actual_flow(flow) == expected_flow(mini)
    assert flow["listed"]["patients"] == N_PATIENTS and flow["lab_items"] == {"BNP": [50800], "BNPP": [50963]}
    # Every listed image is accounted for once: a manifest row or one of the exclusions.
    assert flow["listed"]["images"] == (flow["frontal"]["images"] + sum(flow["excluded"].values()))
    assert flow["frontal"]["images"] == flow["with_lab"]["images"] + flow["no_lab_in_window"]
    assert built.flow_png.read_bytes()[:4] == b"\x89PNG"


def test_every_listed_image_is_a_row_or_a_reject_with_its_reason(mini, built):
    rows = read_rows(built.manifest)
    assert built.n_rows == len(rows) == sum(fate == "with_lab" for fate in fates(mini))
    manifest_paths = [row["image_path"] for row in rows]
    assert manifest_paths == [f"mimic-cxr/{image.path}" for image in mini.images if image.fate == "with_lab"]
    rejects = [row for row in read_rows(built.rejects) if row["source"] == schema.METADATA.split("/")[-1]]
    expected = Counter(REJECT_REASON[fate] for fate in fates(mini) if fate != "with_lab")
    assert Counter(row["reason"] for row in rejects) == expected
    assert all(row["stage"] == "source" and row["detail"] for row in rejects)
    lab_rejects = Counter(row["reason"] for row in read_rows(built.rejects) if row["source"] == "labevents.csv.gz")
    assert lab_rejects == Counter(built.flow["labevents"]["unusable"])
    assert json.loads((built.manifest.parent / "dataset.json").read_text())["labs"] == "measured"  # for the reports


def test_manifest_rows_carry_time_view_findings_and_their_paired_lab(mini, built):
    """make_tfrecords' own loading pairs each image with the planted lab: nearest, censoring, the tie rule."""
    loaded = load_manifest(built.manifest, built.labs, ManifestConfig(salt=SALT))
    assert not [reject for reject in loaded.rejects if reject.stage == "manifest"]
    by_path = {row.image_path: row for row in loaded.rows}
    planted = {f"mimic-cxr/{image.path}": image for image in mini.images if image.fate == "with_lab"}
    assert set(by_path) == set(planted)
    rows = {row["image_path"]: row for row in read_rows(built.manifest)}
    states = {1: "positive", 0: "negative", -1: "unknown"}
    for path, image in planted.items():
        row, record = by_path[path], rows[path]
        assert datetime.fromisoformat(record["study_datetime"]) == image.study_datetime
        assert record["view"] == image.view and record["patient_id"] == image.subject_id
        assert {column: record[column] for column in ("edema", "cardiomegaly", "effusion")} == (
            image.findings or {"edema": "", "cardiomegaly": "", "effusion": ""})
        got = {test: (value, flag) for test, value, flag in (("BNP", row.bnp_pg_ml, row.bnp_censored),
                                                             ("BNPP", row.bnpp_pg_ml, row.bnpp_censored))
               if not math.isnan(value)}
        assert got == image.labs, path
        assert states[row.positive] == image.positivity
    assert any(image.scenario == TIE_SCENARIO for image in planted.values())  # the tie was exercised


def test_the_official_split_keeps_each_patient_in_one_split(mini, tmp_path):
    result = build(mini, tmp_path / "out", official_split=True)
    assert actual_flow(result.flow) == expected_flow(mini, official=True)
    rows = read_rows(result.manifest)
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["patient_id"], row["split"]) == row["split"]
    assert set(split_of.values()) == {"train", "val", "test"} and mini.conflict_subject not in split_of
    planted = {f"mimic-cxr/{image.path}": image.official_split for image in mini.images}
    assert all({"validate": "val"}.get(planted[row["image_path"]], planted[row["image_path"]]) == row["split"]
               for row in rows)


@pytest.mark.parametrize("with_metadata", [True, False])
def test_the_dicom_release_gives_the_same_rows(tmp_path, with_metadata):
    """DICOM tree + record list; without the metadata CSV, view and study time come from the headers."""
    mini = write_mini_mimic(tmp_path / "data", images="dicom", with_metadata=with_metadata)
    result = build(mini, tmp_path / "out", progress=True)  # progress bars over the headers and labevents bytes
    expected = expected_flow(mini)
    assert actual_flow(result.flow) == expected and result.flow["excluded"]["unreadable_header"] == 0
    rows = read_rows(result.manifest)
    assert [row["image_path"] for row in rows] == [f"mimic-cxr/{image.path[:-3]}dcm" for image in mini.images
                                                   if image.fate == "with_lab"]
    source = schema.METADATA if with_metadata else schema.RECORD_LIST
    assert {row["source"] for row in read_rows(result.rejects)} == {source, "labevents.csv.gz"}


def test_item_overrides_replace_the_label_search(mini, tmp_path):
    result = build(mini, tmp_path / "out", itemids={"BNPP": [50963]})
    assert result.flow["lab_items"] == {"BNPP": [50963]}
    assert {row["test"] for row in read_rows(result.labs)} == {"BNPP"}
    assert result.flow["with_lab"]["images"] == sum(image.fate == "with_lab" and "BNPP" in image.labs
                                                    for image in mini.images)
    with pytest.raises(ValueError, match="d_labitems.csv.gz: --itemid BNP=12345"):
        build(mini, tmp_path / "o2", itemids={"BNP": [12345]})


def _drop_column(path: Path, column: str) -> None:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    keep = [index for index, name in enumerate(rows[0]) if name != column]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[row[i] for i in keep] for row in rows])
    path.write_bytes(gzip.compress(out.getvalue().encode("utf-8")))


@pytest.mark.parametrize("side, file, column, images", [
    ("cxr", schema.METADATA, "StudyTime", "jpg"), ("cxr", schema.METADATA, "ViewPosition", "jpg"),
    ("cxr", schema.CHEXPERT, "Pleural Effusion", "jpg"), ("cxr", schema.SPLIT, "split", "jpg"),
    ("cxr", schema.RECORD_LIST, "path", "dicom"),
    ("iv", schema.D_LABITEMS, "label", "jpg"), ("iv", schema.LABEVENTS, "valuenum", "jpg"),
    ("iv", schema.LABEVENTS, "charttime", "jpg"),
])
def test_a_missing_column_is_named_with_its_file(tmp_path, side, file, column, images):
    mini = write_mini_mimic(tmp_path / "data", images=images, with_metadata=images == "jpg")
    _drop_column(getattr(mini, side) / file, column)
    with pytest.raises(ValueError, match=rf"{Path(file).name}: missing column\(s\) \['{column}'\]"):
        build(mini, tmp_path / "out", official_split=True)


def test_the_cli_prints_the_flow_and_refuses_a_missing_folder(mini, tmp_path, capsys):
    assert SOURCES["mimic"] is write_mimic_manifest
    args = ["mimic", "--cxr", str(mini.cxr), "--iv", str(mini.iv), "--out", str(tmp_path / "out"), "--no-progress"]
    assert make_manifest.main([*args, "--itemid", "BNPP=50963", "BNP=50800"]) == 0
    out = capsys.readouterr().out
    assert "chosen lab item: BNPP: itemid 50963 'NTproBNP'" in out and "With a lab within +-24 h" in out
    assert "BNP_CXR_SALT" in out
    assert make_manifest.main([*args[:3], "--iv", str(tmp_path / "absent"), "--out", str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_manifest.main([*args, "--itemid", "CRP=1"])


# ---------------------------------------------------------------- builder -> make_tfrecords -> train -> evaluate

run_tool = partial(run_documented_tool, salt=SALT)


@pytest.mark.slow
def test_end_to_end_and_no_mimic_identifier_leaves_the_manifest(mini, tmp_path):
    run_tool("make_manifest.py", "mimic", "--cxr", str(mini.cxr), "--iv", str(mini.iv), "--out", "input",
             "--official-split", "--no-progress", cwd=tmp_path)
    flow = json.loads((tmp_path / "input" / "flow.json").read_text())
    run_tool("make_tfrecords.py", "--manifest", "input/manifest.csv", "--labs", "input/labs.csv", "--out", "records",
             "--sizes", "64", "--workers", "0", "--no-progress", cwd=tmp_path)
    summary = json.loads((tmp_path / "records" / "summary.json").read_text())
    assert (summary["written"], summary["rejected"]) == (flow["with_lab"]["images"], 0)
    assert {split: counts["written"] for split, counts in summary["per_split"].items()} == {
        split: counts["images"] for split, counts in flow["splits"].items() if counts["images"]}
    assert {"edema", "cardiomegaly", "effusion"} <= set(summary["finding_columns"])
    run_tool("train.py", "--records", "records", "--size", "64", "--backbone", "small_cnn", "--members", "1",
             "--epochs", "1", "--batch-size", "8", "--run-dir", "run", "--no-evaluate", "--verbose", "0", cwd=tmp_path)
    run_tool("evaluate.py", "--size", "64", "--run-dir", "run", "--records", "records", "--split", "train",
             "--n-boot", "1000", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_images"] == flow["splits"]["train"]["images"]
    patterns = identifier_patterns(mini.identifiers, "MIMIC identifier")
    manifest = (tmp_path / "input" / "manifest.csv").read_bytes()  # positive control: the manifest names them
    assert sum(pattern in manifest for pattern in patterns) >= flow["with_lab"]["patients"]
    for derived in ("records", "run"):
        assert scan_tree(tmp_path / derived, patterns, digit_bounded=True) == [], derived
    flow_files = [tmp_path / "input" / name for name in ("flow.json", "flow.png")]
    for path in flow_files:
        assert not [pattern for pattern in patterns if pattern in path.read_bytes()], path
