"""Bounded memory: peak RSS of tools/make_tfrecords.py on a 1,000- vs a 10,000-row manifest (issue #6.5).

The manifest rows are distinct 64 x 64 PNGs (one patient each; the manifest rejects a repeated image_path
as duplicate_row, so every row has its own file) with inline BNP / BNPP. Each run is a fresh process; its
process tree is polled in /proc: the peak RSS (VmHWM) of the parent, the largest of its child processes
(decode workers, multiprocessing's resource tracker), and the largest sum of the tree's RSS.
Flat: every 10k peak <= 1.2x its 1k peak.

    python bench/memory.py
    python bench/memory.py --rows 1000 10000 --workers 2 --sizes 64 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import report

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PX = 64
FLAT_RATIO = 1.2
POLL_S = 0.02


def write_images(folder: Path, n: int, seed: int) -> list[str]:
    """n distinct 64 x 64 uint16 PNGs (noise plus a disc of random radius); returns their relative paths."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:IMAGE_PX, :IMAGE_PX]
    paths = []
    for index in range(n):
        image = rng.normal(20000, 1500, (IMAGE_PX, IMAGE_PX))
        image[(yy - 36) ** 2 + (xx - 32) ** 2 < rng.uniform(6, 20) ** 2] += 25000
        path = f"images/im{index:05d}.png"
        cv2.imwrite(str(folder / path), np.clip(image, 0, 65535).astype(np.uint16))
        paths.append(path)
    return paths


def write_manifest(folder: Path, paths: list[str], name: str, seed: int) -> Path:
    """A manifest of the given images, one patient per row, inline labs."""
    rng = np.random.default_rng(seed)
    lines = ["patient_id,image_path,study_datetime,bnp,bnpp"]
    for index, path in enumerate(paths):
        lines.append(f"P{index:06d},{path},2021-{1 + index % 12:02d}-{1 + index % 28:02d},"
                     f"{10 ** rng.uniform(1, 3.5):.1f},{10 ** rng.uniform(1.5, 4.3):.1f}")
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def _tree(root_pid: int) -> dict[int, int]:
    """{pid: parent pid} of root_pid and its live descendants."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    members, frontier = {root_pid: parents.get(root_pid, 0)}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in members:
                members[child] = parent
                frontier.append(child)
    return members


def _status_kb(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value.split()[0]) for key, _, value in (line.partition(":") for line in lines)
            if key in ("VmHWM", "VmRSS")}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def measure(command: list[str], env: dict) -> dict:
    """Run command, polling its process tree; peak RSS in MB of the parent, the largest worker, the tree.

    A child caught between fork and exec still shares (and reports) the parent's pages: such children
    are skipped, and a process's peak is its last VmHWM reading (exec starts a new high-water mark).
    """
    started = time.monotonic()
    log = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall the run while we poll
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    peaks_kb: dict[int, int] = {}
    tree_kb = 0
    while process.poll() is None:
        parent_cmdline, total = _cmdline(process.pid), 0
        for pid in _tree(process.pid):
            if pid != process.pid and _cmdline(pid) in (parent_cmdline, b""):
                continue
            status = _status_kb(pid)
            if status:
                total += status["VmRSS"]
                peaks_kb[pid] = status["VmHWM"]
        tree_kb = max(tree_kb, total)
        time.sleep(POLL_S)
    log.seek(0)
    output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{command[1]} exited with {process.returncode}:\n{output[-3000:]}")
    workers = [kb for pid, kb in peaks_kb.items() if pid != process.pid]
    return {"seconds": round(time.monotonic() - started, 1),
            "parent_peak_mb": round(peaks_kb.get(process.pid, 0) / 1024, 1),
            "worker_peak_mb": round(max(workers, default=0) / 1024, 1), "tree_peak_mb": round(tree_kb / 1024, 1),
            "processes_seen": len(workers),
            "summary": next(line for line in output.splitlines() if "manifest rows" in line)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    env = {**os.environ, "BNP_CXR_SALT": "bench-memory-salt", "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        paths = write_images(folder, max(args.rows), args.seed)
        for n in sorted(args.rows):
            manifest = write_manifest(folder, paths[:n], f"manifest_{n}.csv", args.seed)
            command = [sys.executable, str(ROOT / "tools" / "make_tfrecords.py"), "--no-progress", "--manifest",
                       str(manifest), "--out", str(folder / f"records_{n}"), "--sizes", *map(str, args.sizes),
                       "--workers", str(args.workers), "--shard-size", str(args.shard_size)]
            rows.append({"rows": n, **measure(command, env)})
            print(rows[-1]["summary"])
    small, large = rows[0], rows[-1]
    ratios = {key: round(large[key] / small[key], 3) for key in ("parent_peak_mb", "worker_peak_mb", "tree_peak_mb")
              if small[key]}
    result = {"settings": vars(args), "ratio_largest_vs_smallest": ratios, "flat_ratio": FLAT_RATIO,
              "flat": all(ratio <= FLAT_RATIO for ratio in ratios.values())}
    report("memory", result, rows, ["rows", "seconds", "parent_peak_mb", "worker_peak_mb", "tree_peak_mb",
                                    "processes_seen"])
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
