"""End to end: tools/make_tfrecords.py on the phantom cohort and on real radiographs from ../shared/data."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnp_cxr.data.manifest import load_manifest
from bnp_cxr.records.writer import IngestConfig, write_records

ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "dicom"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "make_tfrecords.py"), "--no-progress", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_on_phantom_cohort_accounts_for_every_row(small_cohort, tmp_path):
    cohort_dir, cohort = small_cohort, json.loads((small_cohort / "cohort.json").read_text())
    result = run_cli("--manifest", str(cohort_dir / "manifest.csv"), "--labs", str(cohort_dir / "labs.csv"),
                     "--out", str(tmp_path / "records"), "--sizes", "64", "128", "--workers", "2",
                     "--shard-size", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "records" / "summary.json").read_text())
    with open(cohort_dir / "manifest.csv") as handle:
        manifest_rows = sum(1 for _ in csv.DictReader(handle))
    assert summary["rows"] == manifest_rows == summary["written"] + summary["rejected"]
    assert summary["written"] > 0.6 * manifest_rows
    with open(tmp_path / "records" / "rejects.csv") as handle:
        rejected = {(int(row["row"]), row["stage"], row["reason"], row["column"]) for row in csv.DictReader(handle)
                    if row["source"] == "manifest.csv"}
    # Every planted defect is caught on its row, at its stage, for its reason (cohort.json says which).
    planted = {(d["manifest_row"], d["stage"], d["reason"], d["column"]) for d in cohort["planted_defects"]}
    assert planted and planted <= rejected, planted - rejected
    assert "processing_error" not in summary["reject_reasons"]  # that reason means a bug of ours
    assert f"{summary['written']} written" in result.stdout
    # Rerunning without --resume/--overwrite refuses to clobber; --resume keeps every shard.
    again = run_cli("--manifest", str(cohort_dir / "manifest.csv"), "--labs", str(cohort_dir / "labs.csv"),
                    "--out", str(tmp_path / "records"), "--sizes", "64", "128", cwd=tmp_path)
    assert again.returncode == 2 and "resume" in again.stderr
    resumed = run_cli("--manifest", str(cohort_dir / "manifest.csv"), "--labs", str(cohort_dir / "labs.csv"),
                      "--out", str(tmp_path / "records"), "--sizes", "64", "128", "--shard-size", "8", "--resume",
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "records" / "summary.json").read_text())["resumed_groups"] == sum(
        summary["shards"].values())


@pytest.mark.parametrize("manifest", [True, False])
def test_cli_reports_bad_sizes_before_any_work(tmp_path, manifest):
    args = ("--manifest", str(tmp_path / "none.csv")) if manifest else ("--cohort", str(tmp_path / "cohort"))
    result = run_cli(*args, "--sizes", "32", cwd=tmp_path)
    assert result.returncode == 2 and "64..1024" in result.stderr
    assert not (tmp_path / "cohort").exists()  # no phantom generated for a run that cannot go on


@pytest.fixture
def shared_dicom_manifest(tmp_path):
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"real radiographs not present at {SHARED_DICOM} (CI has them)")
    (tmp_path / "dicom").mkdir()
    names = sorted(path.name for path in SHARED_DICOM.glob("*.dcm"))
    for name in names:
        os.symlink(SHARED_DICOM / name, tmp_path / "dicom" / name)
    rows = [f"P{i},dicom/{name},2020-01-01,,{400 + i}" for i, name in enumerate(names)]
    (tmp_path / "manifest.csv").write_text("patient_id,image_path,study_datetime,bnp,bnpp\n" + "\n".join(rows) + "\n")
    return tmp_path / "manifest.csv", names


def test_real_dicoms_to_records(shared_dicom_manifest, tmp_path):
    import tensorflow as tf

    from bnp_cxr.records.schema import parse_example

    manifest_path, names = shared_dicom_manifest
    manifest = load_manifest(manifest_path)
    summary = write_records(manifest, tmp_path / "records", IngestConfig(sizes=(64, 256), progress=False))
    assert summary["written"] == len(names) and summary["rejected"] == 0
    by_path = {row.image_id: row.image_path.split("/")[-1] for row in manifest.rows}
    images = {}
    for shard in (tmp_path / "records").glob("*-256px-*.tfrecord"):
        for raw in tf.data.TFRecordDataset(str(shard)):
            parsed = parse_example(raw)
            images[by_path[parsed["image_id"].numpy().decode()]] = parsed["image"].numpy()
    assert set(images) == set(names)
    # Lossless twins give identical records; the near-lossless JPEG-LS stays very close.
    np.testing.assert_array_equal(images["RG1_J2KR.dcm"], images["RG1_UNCR.dcm"])
    np.testing.assert_array_equal(images["RG1_J2KI.dcm"], images["RG1_UNCI.dcm"])
    assert np.abs(images["RG1_JLSN.dcm"].astype(int) - images["RG1_UNCR.dcm"]).mean() < 0.002 * 65535
    for name, image in images.items():
        # MONOCHROME1 radiographs in display convention: mid-lung fields darker than the mediastinum.
        size = image.shape[0]
        third = size // 3
        mediastinum = image[third:2 * third, size // 2 - size // 20:size // 2 + size // 20].mean()
        lungs = np.mean([image[third:2 * third, size // 4 - size // 20:size // 4 + size // 20].mean(),
                         image[third:2 * third, 3 * size // 4 - size // 20:3 * size // 4 + size // 20].mean()])
        assert lungs < mediastinum, name


@pytest.mark.parametrize("allow", [False, True])
def test_cli_absolute_paths_need_allow_outside_root(allow, tmp_path, site_salt):
    """An archive outside the manifest's folder is refused row by row unless --allow-outside-root."""
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"real radiographs not present at {SHARED_DICOM} (CI has them)")
    names = sorted(path.name for path in SHARED_DICOM.glob("*.dcm"))
    rows = [f"P{i},{SHARED_DICOM / name},2020-01-01,,{400 + i}" for i, name in enumerate(names)]
    (tmp_path / "manifest.csv").write_text("patient_id,image_path,study_datetime,bnp,bnpp\n" + "\n".join(rows) + "\n")
    flags = ["--allow-outside-root"] if allow else []
    result = run_cli("--manifest", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "records"),
                     "--sizes", "64", "--workers", "0", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "records" / "summary.json").read_text())
    assert summary["rows"] == len(names)
    assert (summary["written"], summary["rejected"]) == ((len(names), 0) if allow else (0, len(names)))
    with open(tmp_path / "records" / "rejects.csv") as handle:
        reasons = [row["reason"] for row in csv.DictReader(handle)]
    assert reasons == ([] if allow else ["absolute_path"] * len(names))


@pytest.mark.parametrize("fractions, want", [
    (("1", "0", "0"), {"train"}),  # every patient trains: a final model, scored on another set's records
    (("0", "0", "1"), {"test"}),   # every patient is scored: another site's films for a model trained elsewhere
    (("0.5", "0.5", "0"), {"train", "val"}),
])
def test_cli_split_fractions_set_the_hashed_split(shared_dicom_manifest, tmp_path, site_salt, fractions, want):
    manifest_path, names = shared_dicom_manifest
    result = run_cli("--manifest", str(manifest_path), "--out", str(tmp_path / "records"), "--sizes", "64",
                     "--workers", "0", "--split-fractions", *fractions, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "records" / "summary.json").read_text())
    written = {split: counts["written"] for split, counts in summary["per_split"].items() if counts["written"]}
    assert sum(written.values()) == len(names) and set(written) <= want and (len(want) > 1 or set(written) == want)


@pytest.mark.parametrize("fractions", [("0.5", "0.5", "0.5"), ("1.2", "-0.2", "0")])
def test_cli_refuses_split_fractions_that_are_no_split(tmp_path, fractions):
    result = run_cli("--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "records"),
                     "--split-fractions", *fractions, cwd=tmp_path)
    assert result.returncode == 2 and "must be >= 0 and sum to 1" in result.stderr
    assert not (tmp_path / "records").exists()
