"""Bad-input corpus end to end: every manifest row is written or has exactly one specific reject; the job goes on.

One corpus (tests/bad_inputs.py) holds every defect next to good images. The CLI writes it once (each case
checked on its own below), write_records writes it again with a decoder that kills its worker process on one
file, and a labs-table variant covers bad and conflicting lab rows.
"""

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import (CASES, CRASH_NAME, WRITTEN, build_corpus, build_labs_corpus, image, prepare_or_crash,
                        prepare_reporting_imports, square_or_exit)
from bnp_cxr.data.manifest import ManifestConfig, load_manifest
from bnp_cxr.records.pool import ordered_map
from bnp_cxr.records.prepare import prepare_row
from bnp_cxr.records.writer import PROGRESS_DIR, IngestConfig, plan_shards, row_preparer, write_records

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the deliberately bad files

ROOT = Path(__file__).resolve().parents[1]
SHARD_SIZE = 4


@pytest.fixture(scope="module", autouse=True)
def _site_salt(site_salt):
    """The CLI refuses a user manifest without a site salt; this process hashes with the same one."""
    return site_salt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cli_run(corpus, tmp_path_factory):
    """tools/make_tfrecords.py on the corpus: (completed process, output folder).

    Decoding in this process (--workers 0): spawning workers costs seconds, and the crash tests below run the pool.
    """
    out = tmp_path_factory.mktemp("cli") / "records"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tfrecords.py"), "--no-progress",
                             "--manifest", str(corpus.manifest), "--out", str(out), "--sizes", "64",
                             "--shard-size", str(SHARD_SIZE), "--workers", "0"],
                            capture_output=True, text=True, timeout=300)
    return result, out


def rejects_by_row(out_dir: Path, source: str = "manifest.csv") -> dict[int, list[tuple[str, str, str]]]:
    """rejects.csv as row -> [(stage, reason, column), ...], each with a non-empty detail."""
    found: dict[int, list[tuple[str, str, str]]] = {}
    with open(out_dir / "rejects.csv", newline="") as handle:
        for record in csv.DictReader(handle):
            assert record["detail"], record
            if record["source"] == source:
                found.setdefault(int(record["row"]), []).append((record["stage"], record["reason"], record["column"]))
    return found


def shard_ids(out_dir: Path, pattern: str = "*.tfrecord") -> dict[str, list[str]]:
    """Image IDs in each shard, in file order."""
    import tensorflow as tf

    ids = {}
    for shard in sorted(out_dir.glob(pattern)):
        ids[shard.name] = [tf.train.Example.FromString(raw.numpy()).features.feature["image_id"].bytes_list.value[0]
                           .decode() for raw in tf.data.TFRecordDataset(str(shard))]
    return ids


def written_rows(out_dir: Path, manifest_path: Path, labs_path: Path | None = None) -> set[int]:
    """Manifest rows whose image ID is in the shards (the CLI and this process share the salt)."""
    row_of = {row.image_id: row.row for row in load_manifest(manifest_path, labs_path).rows}
    return {row_of[image_id] for ids in shard_ids(out_dir).values() for image_id in ids}


def assert_every_row_accounted(out_dir: Path, expect: dict, manifest_path: Path, labs_path: Path | None = None):
    """Each expected reject appears exactly once, nothing else is rejected, the rest is written; summary adds up."""
    rejected = rejects_by_row(out_dir)
    assert rejected == {row: [outcome] for row, outcome in expect.items() if outcome is not WRITTEN}
    assert written_rows(out_dir, manifest_path, labs_path) == {row for row, outcome in expect.items()
                                                               if outcome is WRITTEN}
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["rows"] == len(expect) == summary["written"] + summary["rejected"]
    assert summary["rejected"] == len(rejected)
    return summary


# ------------------------------------------------------------------------------------------ the CLI run

@pytest.fixture(scope="module")
def cli_outcome(corpus, cli_run):
    """(rejects by row, written rows) of the CLI run, read once for all cases."""
    result, out = cli_run
    assert result.returncode == 0, result.stderr
    return rejects_by_row(out), written_rows(out, corpus.manifest)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_written_or_rejected_for_its_reason(corpus, cli_outcome, case):
    rejected, written = cli_outcome
    for number, spec in zip(corpus.rows_of[case.name], case.rows):
        if spec.expect is WRITTEN:
            assert number in written and number not in rejected, (number, rejected.get(number))
        else:
            assert rejected.get(number) == [spec.expect] and number not in written


def test_cli_run_accounts_for_every_row(corpus, cli_run):
    result, out = cli_run
    assert result.returncode == 0, result.stderr
    summary = assert_every_row_accounted(out, corpus.expect, corpus.manifest)
    assert f"{summary['written']} written, {summary['rejected']} rejected" in result.stdout
    assert "processing_error" not in summary["reject_reasons"]  # that reason would mean a bug of ours


def test_paths_outside_the_folder_need_the_explicit_option(corpus):
    (escaping,), (absolute,) = corpus.rows_of["path_escaping_folder"], corpus.rows_of["absolute_path_outside_folder"]
    allowed = load_manifest(corpus.manifest, config=ManifestConfig(allow_outside_root=True))
    reasons = {reject.row: reject.reason for reject in allowed.rejects}
    # Allowed, they pass the path rule and are judged as files: ../../etc/passwd from the corpus folder does
    # not exist, /etc/passwd does (the image reader would then reject it as unsupported_format).
    assert (reasons.get(escaping), reasons.get(absolute, "accepted")) == ("file_not_found", "accepted")


# ---------------------------------------------------------------- a decoder that kills its worker process

@pytest.mark.parametrize("workers", [1, 2])
def test_decoder_crash_rejects_its_row_and_the_run_goes_on(corpus, tmp_path, workers):
    out = tmp_path / "records"
    manifest = load_manifest(corpus.manifest)
    config = IngestConfig(sizes=(64,), shard_size=SHARD_SIZE, workers=workers, progress=False,
                          prepare=prepare_or_crash)
    write_records(manifest, out, config)
    crash_row = next(row.row for row in manifest.rows if row.image_path.endswith(CRASH_NAME))
    expect = {**corpus.expect, crash_row: image("decoder_crashed")}
    summary = assert_every_row_accounted(out, expect, corpus.manifest)
    assert summary["reject_reasons"]["decoder_crashed"] == 1
    # Order and resume markers: each shard holds its group's surviving rows in manifest order, as its marker says.
    shards = shard_ids(out)
    for group in plan_shards(manifest.rows, SHARD_SIZE):
        marker = json.loads((out / PROGRESS_DIR / group.marker_name).read_text())
        survivors = [row.image_id for row in group.rows if row.row not in (crash_row, *rejects_by_row(out))]
        assert marker["written"] == survivors == shards[f"{group.split}-64px-{group.index:05d}-of-{group.count:05d}"
                                                        ".tfrecord"]
        assert len(marker["written"]) + len(marker["rejects"]) == len(group.rows)
    before = (out / "rejects.csv").read_text()
    resumed = write_records(manifest, out, dataclasses.replace(config, resume=True))
    assert resumed["resumed_groups"] == len(shards) and (out / "rejects.csv").read_text() == before
    # Another decoder makes other records: resuming with the default one redoes every group.
    redone = write_records(manifest, out, dataclasses.replace(config, resume=True, workers=0, prepare=prepare_row))
    assert redone["resumed_groups"] == 0 and "decoder_crashed" not in redone["reject_reasons"]


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_survives_workers_that_exit(workers):
    # Two culprits in one window: each suspect is retried alone, and the second needs a fresh process too.
    crashed = list(ordered_map(square_or_exit, range(7), workers=workers, max_in_flight=7,
                               on_crash=lambda item, error: ("crashed", item)))
    assert crashed == [0, 1, 4, ("crashed", 3), ("crashed", 4), 25, 36]
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):  # without on_crash a dead worker still stops the map
        list(ordered_map(square_or_exit, [3], workers=workers))


def test_decode_workers_import_neither_tensorflow_nor_the_writer(tmp_path):
    # What write_records maps over its worker pool, run in one spawned worker that reports its own imports.
    manifest = load_manifest(*build_labs_corpus(tmp_path / "archive")[:2])
    config = IngestConfig(sizes=(64,), workers=1, progress=False, prepare=prepare_reporting_imports)
    results = list(ordered_map(row_preparer(config), manifest.rows[:2], config.workers))
    assert [(result.reason, result.detail) for result in results] == [("imports", "none")] * 2


def test_workers_zero_maps_in_this_process_and_negative_is_refused():
    assert list(ordered_map(abs, [-2, 3], workers=0)) == [2, 3]
    with pytest.raises(ValueError, match="workers >= 0"):
        IngestConfig(workers=-1)


def test_prepare_must_be_importable_by_name():
    with pytest.raises(ValueError, match="module-level"):
        IngestConfig(prepare=lambda row, sizes, allow_lateral: None)


# ------------------------------------------------------------------------------------------ labs table

def test_labs_table_rows_rejected_with_column_and_images_accounted(tmp_path):
    manifest_path, labs_path, expect = build_labs_corpus(tmp_path / "archive")
    out = tmp_path / "records"
    write_records(load_manifest(manifest_path, labs_path), out, IngestConfig(sizes=(64,), progress=False))
    manifest_expect = {row: outcome for (source, row), outcome in expect.items() if source == "manifest.csv"}
    summary = assert_every_row_accounted(out, manifest_expect, manifest_path, labs_path)
    labs_expect = {row: [outcome] for (source, row), outcome in expect.items() if source == "labs.csv"}
    assert rejects_by_row(out, "labs.csv") == labs_expect
    assert summary["labs"]["rejected_rows"] == len(labs_expect) == summary["labs"]["invalid"]
