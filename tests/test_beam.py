"""Apache Beam runner: the same records, rejects, summary and markers as the local writer, and option handling.

Beam runs in this process on the FnApiRunner: the engine Beam's DirectRunner uses for batch pipelines
when it does not hand them to Prism (which first downloads a binary, so it is not used in tests).
"""

import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("apache_beam", reason="the beam extra is not installed (pip install -e '.[beam]')")

from bnp_cxr.data.manifest import load_manifest  # noqa: E402
from bnp_cxr.records.beam import pipeline_options, write_records_beam  # noqa: E402
from bnp_cxr.records.writer import PROGRESS_DIR, IngestConfig, plan_shards, write_records  # noqa: E402
from test_records import shard_examples  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = (64, 128)
SHARD_SIZE = 8  # the small cohort's ~26 rows make several groups per split
IN_PROCESS = ["--runner", "FnApiRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_threading"]
RUN_FACTS = ("elapsed_s", "workers", "runner")  # how a run went, not what it wrote
MANIFEST_NAME = "manifest-Zürich-北京.csv"


def load_tool():
    return importlib.import_module("bnp_cxr.cli.make_tfrecords")


def config(**overrides) -> IngestConfig:
    return IngestConfig(sizes=SIZES, shard_size=SHARD_SIZE, progress=False, **overrides)


def file_bytes(out_dir: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out_dir.glob(pattern))}


def without(summary: dict, keys=RUN_FACTS) -> dict:
    return {key: value for key, value in summary.items() if key not in keys}


def summary_text_without_run_facts(out_dir: Path) -> list[str]:
    """summary.json's lines as written (encoding included), less run facts and the commas that depend on them."""
    return [line.rstrip(",") for line in (out_dir / "summary.json").read_text(encoding="utf-8").splitlines()
            if not line.strip().startswith(tuple(f'"{key}":' for key in RUN_FACTS))]


@pytest.fixture(scope="module")
def both(small_cohort, tmp_path_factory):
    """(manifest, local out, local summary, beam out, beam summary) on the small phantom cohort.

    The manifest's file name is not ASCII, so the name in rejects.csv and summary.json shows their encoding.
    """
    cohort_dir = small_cohort
    shutil.copyfile(cohort_dir / "manifest.csv", cohort_dir / MANIFEST_NAME)
    manifest = load_manifest(cohort_dir / MANIFEST_NAME, cohort_dir / "labs.csv")
    local_out, beam_out = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("beam")
    local = write_records(manifest, local_out, config())
    beam = write_records_beam(manifest, str(beam_out), config(), IN_PROCESS)
    return manifest, local_out, local, beam_out, beam


def test_beam_writes_the_same_examples_as_local(both):
    _, local_out, local, beam_out, _ = both
    examples = shard_examples(beam_out)
    assert len(examples) == local["written"] > 0
    assert examples == shard_examples(local_out)  # same image_ids, same bytes per image_id and size
    # Same plan and order too: every shard (empty ones of all-rejected groups included) is byte-identical.
    assert file_bytes(beam_out, "*.tfrecord") == file_bytes(local_out, "*.tfrecord")
    assert not list(beam_out.glob("*.tmp*")) and not list((beam_out / PROGRESS_DIR).glob("*.jsonl"))


def test_beam_rejects_summary_and_markers_match_local(both):
    _, local_out, local, beam_out, beam = both
    assert (beam_out / "rejects.csv").read_bytes() == (local_out / "rejects.csv").read_bytes()
    rejects = (beam_out / "rejects.csv").read_text(encoding="utf-8").splitlines()
    assert rejects[0] == "source,row,image_path,stage,reason,column,detail"
    assert {line.split(",")[0] for line in rejects[1:]} >= {MANIFEST_NAME}
    rejected_images = [line for line in rejects if ",image," in line]
    assert rejected_images, "the phantom cohort plants image-stage defects; the Beam workers must reject them"
    assert json.loads((beam_out / "summary.json").read_text(encoding="utf-8")) == beam
    assert without(beam) == without(local) and beam["rows"] == beam["written"] + beam["rejected"]
    # Same bytes apart from the run facts: the manifest's name is written as UTF-8, not as \u escapes.
    assert summary_text_without_run_facts(beam_out) == summary_text_without_run_facts(local_out)
    assert f'"manifest": "{MANIFEST_NAME}"' in (beam_out / "summary.json").read_text(encoding="utf-8")
    assert beam["runner"] == "beam:FnApiRunner" and beam["workers"] is None
    # Same progress markers, so either runner resumes the other's output.
    assert file_bytes(beam_out / PROGRESS_DIR, "*.json") == file_bytes(local_out / PROGRESS_DIR, "*.json")


def test_local_resume_keeps_every_beam_group(both, tmp_path):
    manifest, _, local, beam_out, _ = both
    shutil.copytree(beam_out, tmp_path / "records")
    resumed = write_records(manifest, tmp_path / "records", config(resume=True))
    assert resumed["resumed_groups"] == sum(local["shards"].values())


def test_beam_resume_redoes_only_incomplete_groups(both, tmp_path):
    manifest, local_out, local, beam_out, _ = both
    copy = tmp_path / "records"
    shutil.copytree(beam_out, copy)
    victim = sorted(copy.glob("train-128px-*.tfrecord"))[-1]
    victim.unlink()  # an interrupted run: one shard missing, its group's marker no longer complete
    resumed = write_records_beam(manifest, str(copy), config(resume=True), IN_PROCESS)
    assert resumed["resumed_groups"] == sum(local["shards"].values()) - 1
    assert file_bytes(copy, "*.tfrecord") == file_bytes(local_out, "*.tfrecord")
    assert without(resumed, (*RUN_FACTS, "resumed_groups")) == without(local, (*RUN_FACTS, "resumed_groups"))


def test_beam_refuses_existing_output_without_resume_or_overwrite(both):
    manifest, _, _, beam_out, _ = both
    with pytest.raises(FileExistsError, match="resume"):
        write_records_beam(manifest, str(beam_out), config(), IN_PROCESS)


def test_raw_patient_ids_stay_on_the_launcher(both, monkeypatch, tmp_path):
    import bnp_cxr.records.beam as beam_module

    manifest = both[0]
    staged = {}

    def keep(path, text):  # the rows file is the only thing the launcher hands to workers
        staged[path] = text

    monkeypatch.setattr(beam_module, "write_text", keep)
    groups = plan_shards(manifest.rows, SHARD_SIZE)
    beam_module._stage_rows(str(tmp_path / "rows.jsonl"), groups)
    rows = [json.loads(line)["row"] for line in staged[str(tmp_path / "rows.jsonl")].splitlines()]
    assert len(rows) == len(manifest.rows) and {row["patient_id"] for row in rows} == {""}
    text = staged[str(tmp_path / "rows.jsonl")]
    assert not any(f'"{row.patient_id}"' in text for row in manifest.rows)
    # The JSON round trip is exact (floats, None, NaN; repr because NaN != NaN); staged rows come in plan order.
    assert sorted(repr(dataclasses.replace(row, patient_id="")) for row in manifest.rows) == sorted(
        repr(beam_module.ImageRow(**row)) for row in rows)


@pytest.mark.parametrize("args, expected", [
    (["--direct_num_workers", "2"], {"direct_num_workers": 2}),
    (["--runner=FnApiRunner", "--direct_running_mode", "multi_threading"],
     {"runner": "FnApiRunner", "direct_running_mode": "multi_threading"}),
    (["--runner", "flink", "--flink_master", "host:8081"], {"runner": "flink", "flink_master": "host:8081"}),
    (["--temp_location=gs://bucket/tmp", "--setup_file", "./setup.py"],
     {"temp_location": "gs://bucket/tmp", "setup_file": "./setup.py"}),
])
def test_pipeline_options_pass_through(args, expected):
    options = pipeline_options(args).get_all_options(drop_default=True)
    assert {key: options.get(key) for key in expected} == expected


@pytest.mark.parametrize("args, message", [
    (["--direct_num_wrkers", "2"], r"unknown Beam pipeline option\(s\) \['--direct_num_wrkers'\]"),
    (["--direct_num_workers", "two"], "--direct_num_workers: invalid int value: 'two'"),
    (["--direct_running_mode", "fast"], "invalid choice: 'fast'"),
    (["--runner", "NoSuchRunner"], "unknown Beam runner 'NoSuchRunner'"),
])
def test_bad_pipeline_options_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        pipeline_options(args)


@pytest.mark.parametrize("runner, extra, expected", [
    ("beam", ["--direct_num_workers", "2"], ["--direct_num_workers", "2", "--runner", "DirectRunner"]),
    ("DataflowRunner", ["--region", "r"], ["--region", "r", "--runner", "DataflowRunner"]),
])
def test_cli_runner_value_becomes_beam_runner(runner, extra, expected):
    assert load_tool().beam_args(runner, extra) == expected


def test_cli_beam_runner_with_pass_through_options(both, small_cohort, tmp_path, capsys):
    cohort_dir = small_cohort
    _, local_out, _, _, _ = both
    argv = ["--manifest", str(cohort_dir / "manifest.csv"), "--labs", str(cohort_dir / "labs.csv"),
            "--out", str(tmp_path / "records"), "--sizes", *map(str, SIZES), "--shard-size", str(SHARD_SIZE),
            "--no-progress", *IN_PROCESS]
    assert load_tool().main(argv) == 0
    assert "written" in capsys.readouterr().out
    assert file_bytes(tmp_path / "records", "*.tfrecord") == file_bytes(local_out, "*.tfrecord")
    assert json.loads((tmp_path / "records" / "summary.json").read_text())["runner"] == "beam:FnApiRunner"


@pytest.mark.parametrize("argv, message", [
    (["--runner", "beam", "--direct_num_wrkers", "2"], "unknown Beam pipeline option"),
    (["--runner", "beam", "--direct_num_workers", "two"], "invalid int value: 'two'"),
    (["--runner", "NoSuchRunner"], "unknown Beam runner"),
    (["--direct_num_workers", "2"], "need --runner beam"),  # the local runner takes no Beam options
])
def test_cli_bad_beam_options_fail_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(["--cohort", str(tmp_path / "cohort"), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cohort").exists() and not (tmp_path / "out").exists()
