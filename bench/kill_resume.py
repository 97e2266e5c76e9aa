"""Kill -9 and resume: make_tfrecords killed at K random points, then train.py killed mid-epoch.

The records side kills the whole process group (the writer's spawn pool included) at seeded random
moments spread over the shard-writing phase, checks after every kill that no final-named shard is
partial (bnp_cxr.records.verify), resumes, and compares the final examples with an uninterrupted run;
the training side kills train.py once the first epoch is backed up, on records of a small phantom cohort.

    python bench/kill_resume.py                   # 10 kills, 48-image phantom cohort, 64-256 px
    python bench/kill_resume.py --kills 20 --n-images 80
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from common import report

from bnp_cxr.records.verify import check_final_shards, read_examples
from bnp_cxr.workspace import RunDir

ROOT = Path(__file__).resolve().parents[1]
MAKE_TFRECORDS, TRAIN = ROOT / "tools" / "make_tfrecords.py", ROOT / "tools" / "train.py"
POLL_S = 0.002
# Source images of 512 x 448 px (same physical size as the default): a shard group takes tens of ms to write
# at 64-256 px, so kill moments can land inside groups, between them, and between a rename and its marker.
SOURCE_HEIGHT_PX, SOURCE_WIDTH_PX = 512, 448


@dataclass(frozen=True)
class KillEvent:
    """One interrupted attempt: when it was killed and what the output folder held afterwards."""

    attempt: int
    markers_before: int
    target_markers: int  # kill once this many groups are recorded complete ...
    delay_s: float  # ... plus this random delay
    killed: bool  # False: the run ended before the kill moment came
    markers_after: int
    final_shards: int
    unmarked_shards: int  # complete shards renamed before their group's marker was written
    temporary_files: int
    seconds: float


def kill_cohort_config(n_images: int, seed: int = 0):
    """A small phantom cohort with 512 x 448 px images (about 5 patients in 6 have one study)."""
    from bnp_cxr.phantom import CohortConfig
    from bnp_cxr.phantom.config import DEFAULT_HEIGHT_PX, DEFAULT_SPACING_MM

    return CohortConfig.small(n_images=n_images, n_patients=max(n_images * 5 // 6, 1), seed=seed,
                              height_px=SOURCE_HEIGHT_PX, width_px=SOURCE_WIDTH_PX,
                              pixel_spacing_mm=DEFAULT_SPACING_MM * DEFAULT_HEIGHT_PX / SOURCE_HEIGHT_PX)


def records_command(manifest: Path, labs: Path | None, out_dir: Path, sizes: tuple[int, ...], shard_size: int,
                    workers: int) -> list[str]:
    """The tools/make_tfrecords.py command line for one attempt (add --resume to continue)."""
    labs_args = ["--labs", str(labs)] if labs else []
    return [sys.executable, str(MAKE_TFRECORDS), "--no-progress", "--manifest", str(manifest), *labs_args,
            "--out", str(out_dir), "--sizes", *map(str, sizes), "--shard-size", str(shard_size),
            "--workers", str(workers)]


def reference_records(manifest: Path, labs: Path | None, out_dir: Path, sizes: tuple[int, ...], shard_size: int,
                      salt: str) -> float:
    """An uninterrupted in-process run (1 worker); returns the mean seconds between its group markers."""
    from bnp_cxr.data.manifest import ManifestConfig, load_manifest
    from bnp_cxr.records.writer import PROGRESS_DIR, IngestConfig, write_records

    write_records(load_manifest(manifest, labs, ManifestConfig(salt=salt)), out_dir,
                  IngestConfig(sizes=sizes, shard_size=shard_size, workers=0, progress=False))
    stamps = sorted(path.stat().st_mtime for path in (out_dir / PROGRESS_DIR).glob("*.json"))
    return (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)


def _marker_count(out_dir: Path) -> int:
    from bnp_cxr.records.writer import PROGRESS_DIR

    return sum(1 for _ in (out_dir / PROGRESS_DIR).glob("*.json"))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def kill_group(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGKILL a process started with start_new_session=True and all its group (pool workers too)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while group_members(process.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {group_members(process.pid)} of group {process.pid} survived SIGKILL")
        time.sleep(0.05)


def _temporary_files(out_dir: Path) -> set[tuple[str, int, int]]:
    """(name, inode, ctime) of the temporary shards: a file recreated under the same name counts as new."""
    found = set()
    for path in out_dir.glob("*.tmp"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        found.add((path.name, stat.st_ino, stat.st_ctime_ns))
    return found


def _start(command: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until(condition, process: subprocess.Popen, timeout_s: float) -> bool:
    """Poll until condition() holds (True) or the process exits (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            kill_group(process)
            raise TimeoutError(f"no progress within {timeout_s} s")
        time.sleep(POLL_S)
    return True


def kill_and_resume_records(command: list[str], out_dir: Path, kills: int, seed: int, group_gap_s: float,
                            n_groups: int, env: dict, log_path: Path, timeout_s: float = 300) -> list[KillEvent]:
    """Run `command` `kills` times, each SIGKILLed at a seeded random moment, checking shards after each kill.

    Kill moments: K group counts drawn in 0 .. n_groups - 2 and sorted; attempt i is killed once that many
    groups are recorded complete (or, if that many already were, once its first temporary shard appears),
    plus a uniform delay of up to one group's time.
    The first attempt starts fresh, later ones pass --resume. The caller finishes with a last --resume.
    """
    rng = np.random.default_rng(seed)
    # Kill points spread over the run, each at least one group before its end (the delay is <= one group).
    targets = np.sort(rng.integers(0, max(n_groups - 1, 1), size=kills))
    delays_s = rng.uniform(0, group_gap_s, size=kills)
    events = []
    for attempt in range(kills):
        before = _marker_count(out_dir) if out_dir.is_dir() else 0
        target, delay_s = max(int(targets[attempt]), before), float(delays_s[attempt])
        started = time.monotonic()
        process = _start([*command, *(["--resume"] if attempt else [])], env, log_path)
        if target == before:  # a temporary shard of this attempt, not one left by the last kill
            left = _temporary_files(out_dir)
            reached = _wait_until(lambda: bool(_temporary_files(out_dir) - left), process, timeout_s)
        else:
            reached = _wait_until(lambda: _marker_count(out_dir) >= target, process, timeout_s)
        time.sleep(delay_s if reached else 0)
        killed = process.poll() is None
        kill_group(process)
        if not killed and process.returncode != 0:
            raise AssertionError(f"attempt {attempt} failed with exit code {process.returncode}; see {log_path}")
        shards, unmarked = check_final_shards(out_dir)
        events.append(KillEvent(attempt, before, target, round(delay_s, 4), killed, _marker_count(out_dir), shards,
                                unmarked, sum(1 for _ in out_dir.rglob("*.tmp")),
                                round(time.monotonic() - started, 2)))
    return events


def finish(command: list[str], env: dict, log_path: Path, timeout_s: float = 300) -> float:
    """Run `command` to completion (raising on failure); returns its seconds."""
    started = time.monotonic()
    process = _start(command, env, log_path)
    try:
        code = process.wait(timeout_s)
    finally:
        kill_group(process)
    if code != 0:
        raise AssertionError(f"{command[1]} exited with {code}; see {log_path}:\n{log_path.read_text()[-3000:]}")
    return time.monotonic() - started


def train_command(records: Path, run_dir: Path, size: int, epochs: int, batch_size: int) -> list[str]:
    """A tiny tools/train.py run (small_cnn, no evaluation) into run_dir."""
    return [sys.executable, str(TRAIN), "--records", str(records), "--run-dir", str(run_dir), "--size", str(size),
            "--backbone", "small_cnn", "--members", "1", "--epochs", str(epochs), "--batch-size", str(batch_size),
            "--verbose", "2", "--no-evaluate"]


def _completed_epochs(run_dir: Path) -> int:
    from bnp_cxr.training.loop import completed_epochs

    try:
        return completed_epochs(run_dir)
    except (json.JSONDecodeError, KeyError):  # caught while Keras rewrites it
        return 0


def kill_training_mid_epoch(command: list[str], run_dir: Path, after_epochs: int, max_delay_s: float, seed: int,
                            env: dict, log_path: Path, timeout_s: float = 300) -> dict:
    """Start train.py, SIGKILL it a random moment (< max_delay_s) after `after_epochs` epochs are backed up."""
    delay_s = float(np.random.default_rng(seed).uniform(0, max_delay_s))
    started = time.monotonic()
    process = _start(command, env, log_path)
    reached = _wait_until(lambda: _completed_epochs(run_dir) >= after_epochs, process, timeout_s)
    assert reached, f"train.py ended before {after_epochs} epoch(s) were backed up; see {log_path}"
    time.sleep(delay_s)
    killed = process.poll() is None
    kill_group(process)
    return {"killed": killed, "delay_s": round(delay_s, 4), "completed_at_kill": _completed_epochs(run_dir),
            "seconds": round(time.monotonic() - started, 2)}


def _records_benchmark(args: argparse.Namespace, work: Path, salt: str, env: dict) -> dict:
    from bnp_cxr.phantom import generate_cohort

    cohort_dir = work / "cohort"
    generate_cohort(cohort_dir, kill_cohort_config(args.n_images), workers=args.workers, progress=False)
    manifest, labs, sizes = cohort_dir / "manifest.csv", cohort_dir / "labs.csv", tuple(args.sizes)
    started = time.monotonic()
    gap_s = reference_records(manifest, labs, work / "reference", sizes, args.shard_size, salt)
    reference_s = time.monotonic() - started
    n_groups = _marker_count(work / "reference")
    command = records_command(manifest, labs, work / "killed", sizes, args.shard_size, args.workers)
    log = work / "make_tfrecords.log"
    events = kill_and_resume_records(command, work / "killed", args.kills, args.seed, gap_s / args.workers, n_groups,
                                     env, log)
    resume_s = finish([*command, "--resume"], env, log)
    same = read_examples(work / "killed") == read_examples(work / "reference")
    return {"events": events, "groups": n_groups, "group_gap_s": round(gap_s, 4), "identical": same,
            "reference_s": round(reference_s, 2), "final_resume_s": round(resume_s, 2)}


def training_records(out_dir: Path, cohort_dir: Path, seed: int, workers: int) -> Path:
    """64 px records of a small phantom cohort with about 160 training images: 40 steps per epoch at batch 4."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.phantom import CohortConfig, generate_cohort
    from bnp_cxr.records.writer import IngestConfig, write_records

    generate_cohort(cohort_dir, CohortConfig.small(n_images=200, n_patients=170, seed=seed), workers=workers,
                    progress=False)
    write_records(load_manifest(cohort_dir / "manifest.csv", cohort_dir / "labs.csv"), out_dir,
                  IngestConfig(sizes=(64,), shard_size=10, workers=0, progress=False))
    return out_dir


def _training_benchmark(args: argparse.Namespace, work: Path, env: dict) -> dict:
    from bnp_cxr.training.loop import read_history

    records = training_records(work / "train_records", work / "train_cohort", args.seed, args.workers)
    run, log = RunDir(work / "run"), work / "train.log"
    command = train_command(records, run.path, 64, epochs=3, batch_size=4)
    kill = kill_training_mid_epoch(command, run.path, 1, 0.5, args.seed, env, log)
    resume_s = finish([*command, "--resume"], env, log)
    sessions = json.loads(run.config.read_text())["sessions"]
    return {**kill, "resumed_from_epoch": sessions[-1]["initial_epoch"], "resume_s": round(resume_s, 2),
            "history_epochs": [row["epoch"] for row in read_history(run.history)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--n-images", type=int, default=48, help="phantom cohort images (512 x 448 px)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="skip the train.py kill")
    args = parser.parse_args(argv)
    salt = "bench-kill-resume-salt"
    os.environ["BNP_CXR_SALT"] = salt  # the in-process heart archive too, not only the tools
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        records = _records_benchmark(args, work, salt, env)
        training = None if args.no_train else _training_benchmark(args, work, env)
    events = records.pop("events")
    passed = records["identical"]  # every kill's shard check already passed, or we would not be here
    rows = [asdict(event) for event in events]
    result = {"kills": args.kills, "landed": sum(event.killed for event in events), "passed": passed,
              "seconds_total": round(sum(event.seconds for event in events) + records["final_resume_s"], 2),
              "settings": {"n_images": args.n_images, "sizes": args.sizes, "shard_size": args.shard_size,
                           "workers": args.workers, "seed": args.seed}, **records, "training": training}
    report("kill_resume", result, rows, list(rows[0]))
    ok = passed and (training is None or (training["history_epochs"] == [0, 1, 2]
                                          and training["resumed_from_epoch"] == training["completed_at_kill"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
