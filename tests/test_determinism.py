"""Determinism (issue #6.4): same seed -> same phantom cohort bytes, same splits, same records; another seed differs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnp_cxr.records.verify import read_examples

ROOT = Path(__file__).resolve().parents[1]

SALT = "determinism-test-salt"
SIZES = (64, 128)
# cohort.json's "run" block is provenance of the generating run (seconds taken, workers, versions), not data.
RUN_PROVENANCE = "run"


def generate(out: Path, seed: int, workers: int) -> Path:
    from bnp_cxr.phantom import CohortConfig, generate_cohort

    generate_cohort(out, CohortConfig.small(seed=seed), workers=workers, progress=False)
    return out


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def write(cohort: Path, out: Path) -> Path:
    """Records of a cohort in this process, one worker."""
    from bnp_cxr.data.manifest import ManifestConfig, load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    manifest = load_manifest(cohort / "manifest.csv", cohort / "labs.csv", ManifestConfig(salt=SALT))
    write_records(manifest, out, IngestConfig(sizes=SIZES, shard_size=8, workers=0, progress=False))
    return out


def write_cli(cohort: Path, out: Path) -> Path:
    """Records of a cohort by tools/make_tfrecords.py in a fresh process, two workers."""
    env = {**os.environ, "BNP_CXR_SALT": SALT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tfrecords.py"), "--no-progress",
                             "--manifest", str(cohort / "manifest.csv"), "--labs", str(cohort / "labs.csv"),
                             "--out", str(out), "--sizes", *map(str, SIZES), "--shard-size", "8", "--workers", "2"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """Seed 0 twice (in two folders, with 1 and 2 render processes) and seed 1 once."""
    return {"a": generate(tmp_path_factory.mktemp("seed0_a"), 0, workers=1),
            "b": generate(tmp_path_factory.mktemp("seed0_b"), 0, workers=2),
            "other": generate(tmp_path_factory.mktemp("seed1"), 1, workers=2)}


@pytest.fixture(scope="module")
def records(cohorts, tmp_path_factory):
    """Seed 0 cohort a in this process, cohort b by the CLI in another process; seed 1 in this process."""
    return {"a": write(cohorts["a"], tmp_path_factory.mktemp("records_a")),
            "b": write_cli(cohorts["b"], tmp_path_factory.mktemp("records_b")),
            "other": write(cohorts["other"], tmp_path_factory.mktemp("records_other"))}


def test_same_seed_gives_byte_identical_cohort_files(cohorts):
    first, second = file_bytes(cohorts["a"]), file_bytes(cohorts["b"])
    assert set(first) == set(second) and any(name.endswith(".dcm") for name in first)
    different = sorted(name for name in first if name != "cohort.json" and first[name] != second[name])
    assert different == []
    summaries = [json.loads(first["cohort.json"]), json.loads(second["cohort.json"])]
    for summary in summaries:
        del summary[RUN_PROVENANCE]
    assert summaries[0] == summaries[1]


def test_other_seed_gives_other_images_and_labs(cohorts):
    first, other = file_bytes(cohorts["a"]), file_bytes(cohorts["other"])
    images = [name for name in first if name.startswith("images/")]
    assert images and all(first[name] != other.get(name) for name in images)
    assert first["labs.csv"] != other["labs.csv"] and first["truth.csv"] != other["truth.csv"]


def test_same_seed_gives_same_splits(cohorts, records):
    from bnp_cxr.data.manifest import ManifestConfig, load_manifest

    def splits(cohort: Path) -> list[tuple[str, str, str]]:
        rows = load_manifest(cohort / "manifest.csv", cohort / "labs.csv", ManifestConfig(salt=SALT)).rows
        return [(row.image_id, row.patient_key, row.split) for row in rows]

    assert splits(cohorts["a"]) == splits(cohorts["b"])
    assert {split for _, _, split in splits(cohorts["a"])} >= {"train", "val"}
    shard_names = [sorted(path.name for path in records[name].glob("*.tfrecord")) for name in ("a", "b")]
    assert shard_names[0] and shard_names[0] == shard_names[1]  # names carry split, size and shard count


def test_same_seed_gives_the_same_examples_in_any_process(cohorts, records):
    first, second = read_examples(records["a"]), read_examples(records["b"])
    assert first and first == second
    assert read_examples(records["other"]) != first
    # Rejects name manifest rows and paths relative to the manifest, never the folder the cohort is in.
    rejects = [(records[name] / "rejects.csv").read_text() for name in "ab"]
    assert rejects[0].count("\n") > 1 and rejects[0] == rejects[1]
    assert not any(str(cohorts[name]) in rejects[i] for i, name in enumerate("ab"))


def test_same_seed_gives_byte_identical_shards_in_any_process(records):
    first, second = file_bytes(records["a"]), file_bytes(records["b"])
    shards = sorted(name for name in first if name.endswith(".tfrecord"))
    assert shards and [name for name in shards if first[name] != second.get(name)] == []
