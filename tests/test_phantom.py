"""Tests of the phantom cohort (bnp_cxr.phantom): determinism, files and schemas, DICOM decoding, anatomy,
findings monotone in severity, Kerley lines' scale, confounders outside the lungs, ceiling, planted defects."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from bnp_cxr.phantom import COMPONENT_BITS, CohortConfig, generate_cohort, write_contact_sheet
from bnp_cxr.phantom import anatomy, findings, model
from bnp_cxr.phantom.cohort import LABS_COLUMNS, MANIFEST_COLUMNS
from bnp_cxr.phantom.plan import BAD_DATETIME_TEXT, DEFECTS, plan_cohort
from bnp_cxr.phantom.render import StudySpec, render_study

try:
    from bnp_cxr.data.imaging import RadiographError, read_radiograph
except ImportError:  # the reader is optional here: fall back to the phantom's own pydicom decode
    RadiographError, read_radiograph = None, None

REPO = Path(__file__).resolve().parents[1]


def display_pixels(path: Path) -> np.ndarray:
    """Display-convention pixels through the project reader when present, else pydicom."""
    if read_radiograph is not None:
        return read_radiograph(path, allow_lateral=True).pixels
    from bnp_cxr.phantom.dicomio import read_display

    return read_display(path)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """Three small cohorts: seed 0 (1 worker), seed 0 again (2 spawned workers), seed 1."""
    root = tmp_path_factory.mktemp("phantom")
    made = {"a": (CohortConfig.small(), 1), "b": (CohortConfig.small(), 2), "c": (CohortConfig.small(seed=1), 1)}
    for name, (config, workers) in made.items():
        generate_cohort(root / name, config, workers=workers, progress=False)
    return {name: root / name for name in made}


@pytest.fixture(scope="module")
def cohort(cohorts) -> Path:
    return cohorts["a"]


@pytest.fixture(scope="module")
def summary(cohort) -> dict:
    return json.loads((cohort / "cohort.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def truth(cohort) -> list[dict]:
    return read_csv(cohort / "truth.csv")[1]


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "cohort.json"}


def test_same_seed_gives_identical_bytes_regardless_of_workers(cohorts):
    a, b = files_of(cohorts["a"]), files_of(cohorts["b"])
    assert a.keys() == b.keys() and len(a) > 3 * 24
    assert [name for name in a if a[name] != b[name]] == []
    summary_a, summary_b = (json.loads((cohorts[k] / "cohort.json").read_text(encoding="utf-8")) for k in "ab")
    assert summary_a.pop("run")["workers"] == 1 and summary_b.pop("run")["workers"] == 2
    assert summary_a == summary_b  # everything but the run's timing and worker count


def test_different_seed_differs(cohorts):
    a, c = files_of(cohorts["a"]), files_of(cohorts["c"])
    images = [name for name in a if name.startswith("images/")]
    assert sum(a[name] != c.get(name) for name in images) == len(images)
    assert a["labs.csv"] != c["labs.csv"]


def test_generate_is_idempotent_and_refuses_another_config(cohort, summary):
    before = {path: path.stat().st_mtime_ns for path in cohort.rglob("*")}
    assert generate_cohort(cohort, CohortConfig.small(), progress=False) == summary
    assert {path: path.stat().st_mtime_ns for path in cohort.rglob("*")} == before
    with pytest.raises(FileExistsError):
        generate_cohort(cohort, CohortConfig.small(seed=5), progress=False)


def test_manifest_and_labs_schema(cohort):
    columns, rows = read_csv(cohort / "manifest.csv")
    assert tuple(columns) == MANIFEST_COLUMNS
    assert all("\\" not in row[key] and not row[key].startswith("/") for row in rows
               for key in ("image_path", "lung_mask_path", "component_mask_path"))
    assert all(row["view"] in {"PA", "AP", "LATERAL"} for row in rows)
    assert all("P" not in Path(row["image_path"]).name.upper().replace("IM", "") for row in rows)
    columns, labs = read_csv(cohort / "labs.csv")
    assert tuple(columns) == LABS_COLUMNS
    from bnp_cxr.data.labs import parse_datetime, parse_lab_value

    assert {row["test"] for row in labs} == {"BNP", "BNPP"}
    for row in labs:
        parse_datetime(row["lab_datetime"])
        value, _ = parse_lab_value(row["value"])
        low, high = (50, 35000) if row["test"] == "BNPP" else (10, 5000)
        assert low <= value <= high


def test_truth_table_rows_and_columns(cohort, truth):
    assert len(truth) == 24
    for name in COMPONENT_BITS:
        assert {f"{name}_strength", f"{name}_row", f"{name}_col", f"{name}_top", f"{name}_bottom"} <= set(truth[0])
    for row in truth:
        assert (cohort / row["image_path"]).is_file()
        assert 0.0 <= float(row["severity"]) <= 1.0
        assert row["heart_row"] != ""  # the heart is in every image
        for name in COMPONENT_BITS:
            if row[f"{name}_top"] != "":
                assert 0 <= float(row[f"{name}_top"]) < float(row[f"{name}_row"]) < float(row[f"{name}_bottom"]) <= 1


def test_pipeline_rejects_match_planted_defects(cohort, summary):
    from bnp_cxr.data.manifest import load_manifest

    manifest = load_manifest(cohort / "manifest.csv", cohort / "labs.csv")
    got = {(r.row, r.reason, r.column) for r in manifest.rejects if r.stage == "manifest"}
    planted = {(d["manifest_row"], d["reason"], d["column"]) for d in summary["planted_defects"]
               if d["stage"] == "manifest"}
    assert planted and planted <= got
    no_label = {r.image_path for r in manifest.rejects if r.reason == "no_label"}
    assert no_label == set(summary["expected_no_label_images"])
    # Image-stage defects reach the decoder: they are labelled and pass manifest validation.
    passed = {row.image_path for row in manifest.rows}
    assert {d["image_path"] for d in summary["planted_defects"] if d["stage"] == "image"} <= passed


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_planted_defect_present(cohort, summary, kind):
    defects = [d for d in summary["planted_defects"] if d["kind"] == kind]
    assert len(defects) == 1 and defects[0]["reason"] == DEFECTS[kind]["reason"]
    _, rows = read_csv(cohort / "manifest.csv")
    row = rows[defects[0]["manifest_row"] - 2]
    assert row["image_path"] == defects[0]["image_path"]
    path = cohort / row["image_path"]
    if kind == "missing_file":
        assert not path.exists()
    elif kind == "duplicate_row":
        assert rows[defects[0]["manifest_row"] - 3] == row
    elif kind == "lateral_manifest_view":
        assert row["view"] == "LATERAL"
    elif kind == "bad_study_datetime":
        from bnp_cxr.data.labs import LabValueError, parse_datetime

        with pytest.raises(LabValueError):
            parse_datetime(row["study_datetime"])
    elif kind == "lateral_dicom":
        assert pydicom.dcmread(path).ViewPosition == "LL" and row["view"] in ("PA", "AP")
    if kind in ("truncated_dicom", "lateral_dicom") and RadiographError is not None:
        with pytest.raises(RadiographError) as error:
            read_radiograph(path)
        assert error.value.reason == DEFECTS[kind]["reason"]


def test_dicom_headers(cohort, truth):
    _, manifest = read_csv(cohort / "manifest.csv")
    listed = {row["image_path"]: row["study_datetime"] for row in manifest}
    names, syntaxes, uids = set(), set(), set()
    for row in truth:
        if row["planted_defect"] == "truncated_dicom":
            continue
        ds = pydicom.dcmread(cohort / row["image_path"])
        assert ds.file_meta.TransferSyntaxUID is not None and ds.Modality == row["modality"]
        assert ds.PhotometricInterpretation == row["photometric"] and ds.BitsStored == int(row["bits_stored"])
        assert ds.PatientID == row["patient_id"]
        compact = row["study_datetime"].replace("-", "").replace(":", "").replace("T", "")
        assert compact == ds.StudyDate + ds.StudyTime
        assert listed[row["image_path"]] in (row["study_datetime"], BAD_DATETIME_TEXT)
        names.add(str(ds.PatientName))
        syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
        uids.add(ds.SOPInstanceUID)
    assert any(not name.isascii() for name in names)
    assert len(uids) == len(truth) - 1
    assert {"JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless", "Explicit VR Little Endian",
            "Implicit VR Little Endian", "JPEG 2000 Image Compression"} <= syntaxes


@pytest.mark.parametrize("config, expected", [
    # Default cohort: 4 JPEG 2000 lossless and 2 lossy files exercise that codec, uncompressed files the bulk.
    (CohortConfig(), {"jpeg2000_lossless": 4, "jpeg2000_lossy": 2, "rle_lossless": 29, "explicit_vr_le": 311,
                      "implicit_vr_le": 14}),
    (CohortConfig.small(), {"jpeg2000_lossless": 1, "jpeg2000_lossy": 1, "rle_lossless": 2, "explicit_vr_le": 19,
                            "implicit_vr_le": 1}),
])
def test_every_codec_is_exercised_and_the_slow_one_sparingly(config, expected):
    syntaxes = [study.acquisition.transfer_syntax for study in plan_cohort(config).studies]
    assert {name: syntaxes.count(name) for name in expected} == expected and len(syntaxes) == config.n_images


@pytest.mark.parametrize("box", [(40, 90, 30, 70), (0, 20, 0, 120), (100, 128, 90, 128), None])
def test_margin_around_the_lungs_equals_a_whole_image_dilation(box):
    from bnp_cxr.phantom.devices import _disk_kernel, _near

    mask = np.zeros((128, 128), bool)
    if box is not None:
        top, bottom, left, right = box
        mask[top:bottom, left:right] = np.random.default_rng(0).random((bottom - top, right - left)) < 0.3
    whole = cv2.dilate(mask.astype(np.uint8), _disk_kernel(9)) > 0
    assert np.array_equal(_near(mask, 9), whole) and whole.sum() >= mask.sum()


def test_decoded_lungs_darker_than_mediastinum_and_masks_fit(cohort, truth):
    for row in truth:
        if row["planted_defect"] == "truncated_dicom":
            continue
        pixels = display_pixels(cohort / row["image_path"])
        stem = Path(row["image_path"]).stem
        lung = cv2.imread(str(cohort / "masks" / f"{stem}_lungs.png"), cv2.IMREAD_UNCHANGED) > 127
        bits = cv2.imread(str(cohort / "components" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == lung.shape == bits.shape
        heart = (bits & COMPONENT_BITS["heart"]) > 0
        height, width = pixels.shape
        mediastinum = pixels[int(0.2 * height):int(0.35 * height), int(0.47 * width):int(0.53 * width)]
        lung_mean = float(pixels[lung].mean())
        assert lung_mean < float(mediastinum.mean()) and lung_mean < float(pixels[heart].mean())
        # The mask sits on the dark fields: a ring just outside it is brighter than the lungs.
        ring = cv2.dilate(lung.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~lung
        assert lung_mean < float(pixels[ring].mean())
        assert not (((bits & COMPONENT_BITS["confounder"]) > 0) & lung).any()
        assert int(bits.max()) < 2 * max(COMPONENT_BITS.values())


def test_confounders_present_outside_lungs_and_more_frequent_when_sick(truth):
    assert any(row["confounder_present"] == "1" for row in truth)
    studies = plan_cohort(CohortConfig()).studies
    sick = [study.spec.electrodes for study in studies if study.spec.severity > 0.6]
    well = [study.spec.electrodes for study in studies if study.spec.severity < 0.4]
    assert np.mean(sick) > np.mean(well) + 0.2


def test_finding_strengths_monotone():
    config = CohortConfig()
    grid = np.linspace(0, 1, 101)
    table = [model.finding_strengths(float(s), config) for s in grid]
    for key in table[0]:
        values = np.array([row[key] for row in table])
        assert np.all(np.diff(values) >= 0), key
    assert table[0]["lung_opacity"] == 0 and table[-1]["lung_opacity"] == 1
    assert math.isclose(table[0]["ctr"], config.ctr_normal) and math.isclose(table[-1]["ctr"], config.ctr_max)


def test_rendered_findings_monotone_in_severity():
    config = CohortConfig.small(height_px=384, width_px=320, pixel_spacing_mm=0.28 * 1536 / 384)
    lung_means, ctrs = [], []
    for s in (0.05, 0.4, 0.7, 1.0):
        spec = StudySpec(index=0, patient_seed=11, image_seed=12, severity=s, view="PA", electrodes=False,
                         detector_id=0)
        rendered = render_study(spec, config)
        lung_means.append(float(rendered.display[rendered.lung_mask > 0].mean()))
        ctrs.append(rendered.truth["ctr_measured"])
    assert np.all(np.diff(lung_means) > 0), lung_means
    assert np.all(np.diff(ctrs) > 0) and 0.37 < ctrs[0] < 0.47 and ctrs[-1] > 0.55, ctrs


def kerley_field(severity_strength: float = 1.0) -> np.ndarray:
    """The Kerley component alone, at the default native size (1536 x 1280 px, 0.28 mm)."""
    config = CohortConfig()
    rng = np.random.default_rng(3)
    a = anatomy.sample_anatomy(rng, 0.45, False, config.height_px / config.width_px)
    ys, xs = anatomy.grid(config.height_px, config.width_px)
    lungs = {side: anatomy.lung_mask(ys, xs, a, side) for side in anatomy.SIDES}
    blocked = np.zeros((config.height_px, config.width_px), bool)
    field, core, lines = findings.kerley_lines(lungs, blocked, a, severity_strength, rng, config.pixel_spacing_mm,
                                               config.kerley_sigma_mm, amplitude=0.1)
    assert len(lines) >= 20 and core.any() and not (core & ~(lungs[-1] | lungs[1])).any()
    return field


@pytest.mark.parametrize("long_side_px, low, high", [(512, 0.45, 1.0), (256, 0.0, 0.25), (128, 0.0, 0.08)])
def test_kerley_energy_survives_only_at_512(long_side_px, low, high):
    field = kerley_field()
    height, width = field.shape
    factor = height / long_side_px
    small = cv2.resize(field, (round(width / factor), round(height / factor)), interpolation=cv2.INTER_AREA)
    ratio = float(np.mean(small.astype(np.float64) ** 2) / np.mean(field.astype(np.float64) ** 2))
    assert low <= ratio <= high, ratio


def test_kerley_profile_is_zero_mean():
    offsets = np.arange(-40, 41, dtype=np.float32)
    for sigma_px in (0.4, 1.0, 2.7):
        profile = findings.kerley_profile(offsets + 0.3, sigma_px)
        assert abs(float(profile.sum())) < 1e-3 * float(np.abs(profile).sum())
        assert profile[40] > 0 > profile.min()  # bright core, dark flanks


def test_label_noise_ceiling_sane_and_reproducible(summary):
    config = CohortConfig()
    first, second = model.simulated_ceiling(config), model.simulated_ceiling(config)
    assert first == second
    assert 0.82 < first["pearson_r_log10_bnpp"] < 0.88
    assert 0.9 < first["auc_combined_positive"] < 0.95
    assert 0.4 < first["positive_fraction"] < 0.5
    cohort_ceiling = summary["label_noise_ceiling"]["cohort"]
    assert cohort_ceiling["n"] == 24 and 0.5 < cohort_ceiling["pearson_r_log10_bnpp"] <= 1



@pytest.mark.parametrize("severity, positive, expected", [
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 1.0),
    ([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0], 0.0),
    ([0.5, 0.5, 0.1, 0.9], [1, 0, 0, 1], 3.5 / 4),  # one tied positive/negative pair counts 1/2
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], math.nan),  # one class: no AUC
], ids=["perfect", "reversed", "tie", "one-class"])
def test_oracle_auc_table(severity, positive, expected):
    # BNPP 1000 pg/mL is positive, 10 pg/mL negative; BNP 1 pg/mL never is.
    log10_bnpp = np.where(np.array(positive, bool), 3.0, 1.0)
    metrics = model.ceiling_metrics(np.array(severity), log10_bnpp, np.zeros(len(severity)), CohortConfig())
    auc = metrics["auc_combined_positive"]
    assert (math.isnan(auc) and math.isnan(expected)) or auc == pytest.approx(expected)

def test_default_plan_labs_timing_and_censoring():
    plan = plan_cohort(CohortConfig())
    assert len(plan.studies) == 360 and len({s.identity.patient_id for s in plan.studies}) == 300
    when = {s.identity.patient_id: [] for s in plan.studies}
    for study in plan.studies:
        when[study.identity.patient_id].append(study.identity.study_datetime)
    from datetime import datetime

    hours = [min(abs((datetime.fromisoformat(row["lab_datetime"]) - t).total_seconds()) / 3600
                 for t in when[row["patient_id"]]) for row in plan.labs]
    hours = np.array(hours)
    assert np.mean(hours <= 12) > 0.75
    assert np.sum((hours >= 30) & (hours <= 72)) >= 5  # outside the 24 h window
    assert np.sum(hours > 24 * 15) >= 20  # unrelated to any study
    assert any(row["value"].startswith("<") for row in plan.labs) and any(row["value"].startswith(">") for row in plan.labs)


def test_contact_sheet(cohort, tmp_path):
    sheet = cv2.imread(str(write_contact_sheet(cohort, tmp_path / "sheet.png", n=6)), cv2.IMREAD_UNCHANGED)
    assert sheet.ndim == 2 and sheet.shape[1] == 4 * 256 and sheet.std() > 20
    assert (cohort / "contact_sheet.png").is_file()


def test_small_config_and_validation():
    small = CohortConfig.small(seed=3)
    assert small.n_images == 24 and small.seed == 3 and small.height_px <= 256
    assert CohortConfig.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError):
        CohortConfig(n_patients=10, n_images=30)
    with pytest.raises(ValueError):
        replace(small, pixel_spacing_mm=0.0)


def test_cli_small(tmp_path, capsys):
    from bnp_cxr.cli import make_phantom

    assert make_phantom.main(["--small", "--out", str(tmp_path / "cli"), "--seed", "2", "--no-progress"]) == 0
    assert "contact_sheet.png" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "cohort.json").read_text(encoding="utf-8"))["config"]["seed"] == 2
