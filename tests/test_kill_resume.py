"""Kill -9 and resume (issue #6.2): make_tfrecords killed at random points, train.py killed mid-epoch.

The helpers live in bench/kill_resume.py (which runs the full count of kills); CI runs 3.
"""

import csv
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from kill_resume import (check_final_shards, finish, kill_and_resume_records, kill_cohort_config,  # noqa: E402
                         kill_training_mid_epoch, read_examples, records_command, reference_records, train_command)

from archives import heart_records  # noqa: E402

SALT = "test-kill-resume-salt"
KILLS, SEED, WORKERS = 3, 7, 2


@pytest.fixture
def env():
    return {**os.environ, "BNP_CXR_SALT": SALT, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from bnp_cxr.phantom import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, kill_cohort_config(24), workers=WORKERS, progress=False)
    return out


def rejects(out_dir: Path) -> list[dict]:
    with open(out_dir / "rejects.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_make_tfrecords_killed_at_random_points_resumes_to_the_same_examples(cohort, tmp_path, env):
    manifest, labs, sizes, shard_size = cohort / "manifest.csv", cohort / "labs.csv", (64, 128, 256), 2
    gap_s = reference_records(manifest, labs, tmp_path / "reference", sizes, shard_size, SALT)
    expected = read_examples(tmp_path / "reference")
    n_groups = sum(1 for _ in (tmp_path / "reference" / ".progress").glob("*.json"))
    assert n_groups >= 4 and expected

    out = tmp_path / "killed"
    command = records_command(manifest, labs, out, sizes, shard_size, WORKERS)
    log = tmp_path / "make_tfrecords.log"
    # Every kill is followed by the check that each final-named shard parses whole and matches its marker.
    events = kill_and_resume_records(command, out, KILLS, SEED, gap_s / WORKERS, n_groups, env, log)
    assert len(events) == KILLS and any(event.killed for event in events), events
    finish([*command, "--resume"], env, log)

    check_final_shards(out)
    assert read_examples(out) == expected  # same (image_id, size) -> same bytes, nothing lost or doubled
    assert rejects(out) == rejects(tmp_path / "reference")
    assert not list(out.rglob("*.tmp"))
    summary = json.loads((out / "summary.json").read_text())
    reference = json.loads((tmp_path / "reference" / "summary.json").read_text())
    for key in ("rows", "written", "rejected", "per_split", "per_size", "shards", "reject_reasons"):
        assert summary[key] == reference[key], key


@pytest.fixture(scope="module")
def heart_archive(tmp_path_factory):
    """160 train images at batch 4: 40 steps per epoch, so a kill soon after an epoch's backup lands mid-epoch."""
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"),
                         {"train": 160, "val": 8}, (64,), severities=lambda rng, count: rng.random(count),
                         bnp_on=lambda index: True, bnpp_on=lambda index: index % 2 == 0, seed=3)


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_from_the_last_completed_epoch(heart_archive, tmp_path, env):
    from bnp_cxr.training.loop import read_history

    run_dir, log, epochs = tmp_path / "run", tmp_path / "train.log", 3
    command = train_command(heart_archive, run_dir, 64, epochs=epochs, batch_size=4)
    kill = kill_training_mid_epoch(command, run_dir, after_epochs=1, max_delay_s=0.3, seed=SEED, env=env,
                                   log_path=log)
    done = kill["completed_at_kill"]
    assert kill["killed"] and 1 <= done < epochs, kill
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")][:done] == list(range(done))

    finish([*train_command(heart_archive, run_dir, 64, epochs=epochs, batch_size=4), "--resume"], env, log)
    output = log.read_text()
    assert f"epochs {done}..{epochs - 1} to run" in output
    assert f"{epochs} of {epochs} epochs done" in output
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == list(range(epochs))
    sessions = json.loads((run_dir / "config.json").read_text())["sessions"]
    # The epoch after the last completed one was redone; nothing restarted from epoch 0.
    assert [(s["initial_epoch"], s["resumed"]) for s in sessions] == [(0, False), (done, True)]
