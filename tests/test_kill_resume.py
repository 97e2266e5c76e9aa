"""Kill -9 and resume: make_tfrecords killed at random points, train.py killed mid-epoch.

bench/kill_resume.py runs more kills and times them.

Every kill takes the whole process group (the writer's spawn pool included) and waits until none of it
is left, so whatever is on disk afterwards is what a power cut would leave.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from archives import heart_records

from bnp_cxr.records.verify import check_final_shards, read_examples
from bnp_cxr.records.writer import PROGRESS_DIR
from bnp_cxr.workspace import RunDir

ROOT = Path(__file__).resolve().parents[1]
SALT = "test-kill-resume-salt"
KILLS, SEED, WORKERS = 3, 7, 2
SIZES, SHARD_SIZE = (64, 128, 256), 2
# Source images of 512 x 448 px: a shard group takes tens of ms to write at 64-256 px, so kill moments can land
# inside groups, between them, and between a rename and its marker.
SOURCE_HEIGHT_PX, SOURCE_WIDTH_PX = 512, 448
TIMEOUT_S, POLL_S = 300, 0.002


@pytest.fixture
def env():
    return {**os.environ, "BNP_CXR_SALT": SALT, "TF_CPP_MIN_LOG_LEVEL": "2"}


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process of the group is left, from /proc."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # exited meanwhile
            continue
        if stat:
            state, _, group = stat[stat.rindex(")") + 2:].split()[:3]
            if int(group) == pgid and state != "Z":
                return True
    return False


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process and its group; return once none of them is left."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(TIMEOUT_S)
    deadline = time.monotonic() + 10
    while group_alive(process.pid):
        assert time.monotonic() < deadline, f"group {process.pid} survived SIGKILL"
        time.sleep(0.05)


def wait_until(condition, process: subprocess.Popen) -> bool:
    """Poll until condition() holds (True) or the process has ended (False)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no progress"
        time.sleep(POLL_S)
    return True


def finish(command: list[str], env: dict, log: Path) -> None:
    process = start(command, env, log)
    try:
        code = process.wait(TIMEOUT_S)
    finally:
        kill_group(process)
    assert code == 0, log.read_text()[-3000:]


def marker_count(out: Path) -> int:
    return sum(1 for _ in (out / PROGRESS_DIR).glob("*.json"))


def rejects(out_dir: Path) -> list[dict]:
    with open(out_dir / "rejects.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from bnp_cxr.phantom import CohortConfig, generate_cohort
    from bnp_cxr.phantom.config import DEFAULT_HEIGHT_PX, DEFAULT_SPACING_MM

    out = tmp_path_factory.mktemp("cohort")
    config = CohortConfig.small(n_images=24, n_patients=20, height_px=SOURCE_HEIGHT_PX, width_px=SOURCE_WIDTH_PX,
                                pixel_spacing_mm=DEFAULT_SPACING_MM * DEFAULT_HEIGHT_PX / SOURCE_HEIGHT_PX)
    generate_cohort(out, config, workers=WORKERS, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """An uninterrupted in-process run; (its folder, mean seconds between its group markers)."""
    from bnp_cxr.data.manifest import ManifestConfig, load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    out = tmp_path_factory.mktemp("reference")
    write_records(load_manifest(cohort / "manifest.csv", cohort / "labs.csv", ManifestConfig(salt=SALT)), out,
                  IngestConfig(sizes=SIZES, shard_size=SHARD_SIZE, workers=0, progress=False))
    stamps = sorted(path.stat().st_mtime for path in (out / PROGRESS_DIR).glob("*.json"))
    return out, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)


@pytest.mark.slow
def test_make_tfrecords_killed_at_random_points_resumes_to_the_same_examples(cohort, reference, tmp_path, env):
    reference_dir, gap_s = reference
    expected, n_groups = read_examples(reference_dir), marker_count(reference_dir)
    assert n_groups >= 4 and expected
    out, log = tmp_path / "killed", tmp_path / "make_tfrecords.log"
    command = [sys.executable, str(ROOT / "tools" / "make_tfrecords.py"), "--no-progress", "--manifest",
               str(cohort / "manifest.csv"), "--labs", str(cohort / "labs.csv"), "--out", str(out), "--sizes",
               *map(str, SIZES), "--shard-size", str(SHARD_SIZE), "--workers", str(WORKERS)]
    rng = np.random.default_rng(SEED)
    # Kill once this many groups are complete, plus up to one group's time: spread over the run, before its end.
    targets, delays_s = np.sort(rng.integers(0, n_groups - 1, KILLS)), rng.uniform(0, gap_s / WORKERS, KILLS)
    landed = 0
    for attempt, (target, delay_s) in enumerate(zip(targets, delays_s)):
        process = start([*command, *(["--resume"] if attempt else [])], env, log)
        reached = wait_until(lambda: out.is_dir() and marker_count(out) >= target, process)
        time.sleep(delay_s if reached else 0)
        landed += process.poll() is None
        kill_group(process)
        check_final_shards(out)  # raises on a partial shard under its final name
    assert landed, "every run ended before its kill"
    finish([*command, "--resume"], env, log)

    check_final_shards(out)
    assert read_examples(out) == expected  # same (image_id, size) -> same bytes, nothing lost or doubled
    assert rejects(out) == rejects(reference_dir)
    assert not list(out.rglob("*.tmp"))
    summary = json.loads((out / "summary.json").read_text())
    reference_summary = json.loads((reference_dir / "summary.json").read_text())
    for key in ("rows", "written", "rejected", "per_split", "per_size", "shards", "reject_reasons"):
        assert summary[key] == reference_summary[key], key


@pytest.fixture(scope="module")
def heart_archive(tmp_path_factory):
    """160 train images at batch 4: 40 steps per epoch, so a kill soon after an epoch's backup lands mid-epoch."""
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"),
                         {"train": 160, "val": 8}, (64,), severities=lambda rng, count: rng.random(count),
                         bnp_on=lambda index: True, bnpp_on=lambda index: index % 2 == 0, seed=3)


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_from_the_last_completed_epoch(heart_archive, tmp_path, env):
    from bnp_cxr.training.loop import completed_epochs, read_history

    run, log, epochs = RunDir(tmp_path / "run"), tmp_path / "train.log", 3
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--records", str(heart_archive), "--run-dir",
               str(run.path), "--size", "64", "--backbone", "small_cnn", "--members", "1", "--epochs", str(epochs),
               "--batch-size", "4",
               "--verbose", "2", "--no-evaluate"]

    def backed_up() -> int:
        try:
            return completed_epochs(run.path)
        except (json.JSONDecodeError, KeyError):  # caught while Keras rewrites it
            return 0

    process = start(command, env, log)
    assert wait_until(lambda: backed_up() >= 1, process), log.read_text()[-3000:]
    time.sleep(np.random.default_rng(SEED).uniform(0, 0.3))
    assert process.poll() is None, "train.py ended before the kill"
    kill_group(process)
    done = backed_up()
    assert 1 <= done < epochs
    assert [row["epoch"] for row in read_history(run.history)][:done] == list(range(done))

    finish([*command, "--resume"], env, log)
    output = log.read_text()
    assert f"epochs {done}..{epochs - 1} to run" in output
    assert f"{epochs} of {epochs} epochs done" in output
    assert [row["epoch"] for row in read_history(run.history)] == list(range(epochs))
    sessions = json.loads(run.config.read_text())["sessions"]
    # The epoch after the last completed one was redone; nothing restarted from epoch 0.
    assert [(s["initial_epoch"], s["resumed"]) for s in sessions] == [(0, False), (done, True)]
