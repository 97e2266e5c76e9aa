"""Manifest rows -> sharded TFRecords at several sizes, with rejects, a summary and resumable progress.

Rows are grouped per split, in manifest order, into shard groups of `shard_size` rows; a group is
written as one shard per size (``{split}-{size}px-{i:05d}-of-{n:05d}.tfrecord``). Every shard is
written under a temporary name and renamed when complete, then a progress marker records the group's
fingerprint, written image IDs and rejects, so ``resume`` redoes only incomplete groups.

Decoding runs in a pool of worker processes, not in tf.data threads: pydicom and the JPEG 2000
decoders hold the GIL, so threads give no speed-up (bench/ingest.py measures the parallel efficiency).
A decoder that kills its worker (segfault in a C codec, os._exit) costs only its row: the pool is
recreated, the rows that were in flight are retried one at a time in a fresh process, and the one that
kills that process too is rejected as `decoder_crashed`. workers=1 is one such process (the same
isolation, no parallelism); workers=0 decodes in this process, where a crashing codec ends the run (the
library default, for small trusted inputs and debugging; the CLI defaults to one process per CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from bnp_cxr import __version__
from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.data.manifest import ImageRow, Manifest, Reject
from bnp_cxr.records.prepare import Failure, Prepared, prepare_row
from bnp_cxr.workspace import DEFAULT_SIZES
from bnp_cxr.records.schema import SCHEMA_VERSION, SHARD_PATTERN, serialize_example, shard_name

MIN_SIZE, MAX_SIZE = 64, 1024
PROGRESS_DIR = ".progress"
REJECT_FIELDS = ("source", "row", "image_path", "stage", "reason", "column", "detail")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """How records are written; sizes in px (square), shard_size in radiographs per shard."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    shard_size: int = 128
    workers: int = 0  # decode processes; 0 = in this process, without crash isolation
    resume: bool = False
    overwrite: bool = False
    allow_lateral: bool = False
    progress: bool = True
    # What decodes one row: prepare_row's signature (row, sizes, allow_lateral) -> Prepared | Failure. It must be
    # a module-level function: spawned workers import it by module and name (they inherit this sys.path).
    prepare: Callable[..., Prepared | Failure] = prepare_row

    def __post_init__(self) -> None:
        bad = [size for size in self.sizes if not MIN_SIZE <= size <= MAX_SIZE]
        if bad or not self.sizes:
            raise ValueError(f"sizes must be within {MIN_SIZE}..{MAX_SIZE} px, got {list(self.sizes)}")
        if self.shard_size < 1 or self.workers < 0:
            raise ValueError(f"shard_size must be >= 1 and workers >= 0, got {self.shard_size} and {self.workers}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if "<" in getattr(self.prepare, "__qualname__", "<"):
            raise ValueError(f"prepare must be a module-level function (workers import it by name), got "
                             f"{self.prepare!r}")


@dataclass(frozen=True)
class ShardGroup:
    """Rows written together: shard `index` of `count` of one split, one file per size."""

    split: str
    index: int
    count: int
    rows: tuple[ImageRow, ...] = field(repr=False)

    @property
    def marker_name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.json"


def plan_shards(rows: Iterable[ImageRow], shard_size: int) -> list[ShardGroup]:
    """Group rows by split (manifest order kept) into consecutive groups of at most shard_size."""
    by_split: dict[str, list[ImageRow]] = {}
    for row in rows:
        by_split.setdefault(row.split, []).append(row)
    plan = []
    for split in sorted(by_split):
        members = by_split[split]
        count = math.ceil(len(members) / shard_size)
        for index in range(count):
            plan.append(ShardGroup(split, index, count, tuple(members[index * shard_size:(index + 1) * shard_size])))
    return plan


def group_fingerprint(group: ShardGroup, config: IngestConfig) -> str:
    """Hash of what a group's shards depend on: its rows (pseudonymous fields, file stats) and settings."""
    settings = [SCHEMA_VERSION, list(config.sizes), config.allow_lateral]
    if config.prepare is not prepare_row:  # another decoder writes other records; the default keeps old markers
        settings.append(f"{config.prepare.__module__}.{config.prepare.__qualname__}")
    hasher = hashlib.sha256(json.dumps(settings).encode())
    for row in group.rows:
        fields = dataclasses.asdict(row)
        del fields["patient_id"], fields["abs_path"]  # raw ID never leaves memory; paths may move
        stat = os.stat(row.abs_path)
        hasher.update(json.dumps([fields, stat.st_size, stat.st_mtime_ns], sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def _prepare_safely(row: ImageRow, sizes: tuple[int, ...], allow_lateral: bool,
                    prepare: Callable[..., Prepared | Failure] = prepare_row) -> Prepared | Failure:
    # A bug or an unforeseen decoder error on one file must reject that row, not stop the archive.
    try:
        return prepare(row, sizes, allow_lateral)
    except Exception as error:  # noqa: BLE001 - reported per row in rejects.csv
        return Failure("processing_error", "image_path", f"{type(error).__name__}: {error}")


def decoder_crashed(row: ImageRow, error: BaseException) -> Failure:
    """The reject for a row whose decoding killed a fresh worker process on its own."""
    _log.warning("decoding %s killed its worker process; row %d rejected as decoder_crashed", row.image_path, row.row)
    return Failure("decoder_crashed", "image_path", "decoding this file killed the worker process (e.g. a "
                                                    f"segfault in a codec), also when retried alone: {error}")


def ordered_map(fn: Callable, items: Iterable, workers: int, max_in_flight: int | None = None,
                on_crash: Callable[[object, BaseException], object] | None = None) -> Iterator:
    """Map in `workers` processes (spawn; TensorFlow is not fork-safe; 0: in this one), in order, bounded memory.

    Without `on_crash` a worker that dies raises BrokenProcessPool. With it, the pool is recreated, the
    items in flight are retried one at a time in a fresh process, and an item that kills that process too
    yields on_crash(item, error) in its place.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    max_in_flight = max_in_flight or 4 * workers
    context = multiprocessing.get_context("spawn")
    items = iter(items)
    pending: deque[tuple[object, Future | None]] = deque()  # None: not submitted because the pool had broken
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        while True:
            for item in items:
                try:
                    pending.append((item, pool.submit(fn, item)))
                except BrokenProcessPool:
                    pending.append((item, None))
                if len(pending) >= max_in_flight:
                    break
            if not pending:
                return
            future = pending[0][1]
            try:
                if future is None:
                    raise BrokenProcessPool("the worker pool broke before this item was submitted")
                result = future.result()
            except BrokenProcessPool:
                if on_crash is None:
                    raise
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _isolate(fn, list(pending), context, on_crash)
                pending.clear()
                pool = ProcessPoolExecutor(workers, mp_context=context)
                continue
            pending.popleft()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(fn: Callable, entries: list[tuple[object, Future | None]], context, on_crash: Callable) -> Iterator:
    """Results of items in flight when a worker died: finished ones as they are, the rest retried one by one."""
    solo = None
    try:
        for item, future in entries:
            if future is not None and future.done() and not future.cancelled() and future.exception() is None:
                yield future.result()
                continue
            solo = solo or ProcessPoolExecutor(1, mp_context=context)
            try:
                result = solo.submit(fn, item).result()
            except BrokenProcessPool as error:
                solo.shutdown(wait=True)
                solo = None  # the next suspect gets a fresh process
                result = on_crash(item, error)
            yield result
    finally:
        if solo is not None:
            solo.shutdown(wait=True)


def _existing_shards(out_dir: Path, sizes: tuple[int, ...]) -> list[Path]:
    found = []
    for path in out_dir.glob("*.tfrecord"):
        match = SHARD_PATTERN.match(path.name)
        if match and int(match["size"]) in sizes:
            found.append(path)
    return found


def _prepare_out_dir(out_dir: Path, plan: list[ShardGroup], config: IngestConfig) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROGRESS_DIR).mkdir(exist_ok=True)
    for leftover in [*out_dir.glob("*.tmp"), *(out_dir / PROGRESS_DIR).glob("*.tmp")]:
        leftover.unlink()  # an interrupted earlier run's partial files
    existing = _existing_shards(out_dir, config.sizes)
    if existing and not (config.resume or config.overwrite):
        raise FileExistsError(f"{out_dir} already holds {len(existing)} shard(s) for sizes {list(config.sizes)}; "
                              "pass resume to finish them or overwrite to replace them")
    planned = {shard_name(g.split, size, g.index, g.count) for g in plan for size in config.sizes}
    stale = [path for path in existing if config.overwrite or path.name not in planned]
    for path in stale:
        path.unlink()
    if config.overwrite:
        for marker in (out_dir / PROGRESS_DIR).glob("*.json"):
            marker.unlink()
    if stale:
        _log.info("removed %d shard(s) not part of this run's plan", len(stale))


def _load_marker(out_dir: Path, group: ShardGroup, fingerprint: str, sizes: tuple[int, ...]) -> dict | None:
    path = out_dir / PROGRESS_DIR / group.marker_name
    if not path.is_file():
        return None
    marker = json.loads(path.read_text())
    complete = marker.get("fingerprint") == fingerprint and all(
        (out_dir / shard_name(group.split, size, group.index, group.count)).is_file() for size in sizes)
    return marker if complete else None


def _write_group(group: ShardGroup, results: Iterator, out_dir: Path, config: IngestConfig,
                 fingerprint: str, manifest_name: str, on_row: Callable[[], None]) -> dict:
    import tensorflow as tf

    finals = {size: out_dir / shard_name(group.split, size, group.index, group.count) for size in config.sizes}
    temps = {size: path.with_name(path.name + ".tmp") for size, path in finals.items()}
    writers = {size: tf.io.TFRecordWriter(str(path)) for size, path in temps.items()}
    written, rejects = [], []
    try:
        for row in group.rows:
            result = next(results)
            if isinstance(result, Failure):
                rejects.append(dataclasses.asdict(Reject(manifest_name, row.row, row.image_path, "image",
                                                         result.reason, result.column, result.detail)))
            else:
                for size, record in result.records.items():
                    writers[size].write(serialize_example(row, record, result.source_shape, result.source_spacing_mm))
                written.append(row.image_id)
            on_row()
    finally:
        for writer in writers.values():
            writer.close()
    for size in config.sizes:
        os.replace(temps[size], finals[size])
    marker = {"fingerprint": fingerprint, "split": group.split, "index": group.index, "count": group.count,
              "sizes": list(config.sizes), "rows": len(group.rows), "written": written, "rejects": rejects}
    marker_path = out_dir / PROGRESS_DIR / group.marker_name
    with atomic_path(marker_path) as temp:
        temp.write_text(json.dumps(marker))
    return marker


def write_records(manifest: Manifest, out_dir: str | os.PathLike, config: IngestConfig | None = None) -> dict:
    """Write the manifest's rows as sharded TFRecords plus rejects.csv and summary.json; returns the summary."""
    from tqdm.auto import tqdm

    config = config or IngestConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    plan = plan_shards(manifest.rows, config.shard_size)
    _prepare_out_dir(out_dir, plan, config)
    fingerprints = {group.marker_name: group_fingerprint(group, config) for group in plan}
    markers: dict[str, dict] = {}
    if config.resume:
        for group in plan:
            marker = _load_marker(out_dir, group, fingerprints[group.marker_name], config.sizes)
            if marker is not None:
                markers[group.marker_name] = marker
    todo = [group for group in plan if group.marker_name not in markers]
    prepare = partial(_prepare_safely, sizes=tuple(config.sizes), allow_lateral=config.allow_lateral,
                      prepare=config.prepare)
    results = ordered_map(prepare, (row for group in todo for row in group.rows), config.workers,
                          on_crash=decoder_crashed)
    with tqdm(total=sum(len(group.rows) for group in todo), unit="img", desc="records",
              disable=not config.progress) as bar:
        for group in todo:
            markers[group.marker_name] = _write_group(group, results, out_dir, config, fingerprints[group.marker_name],
                                                      manifest.path.name, bar.update)
    rejects = _all_rejects(manifest, markers)
    summary = _summarise(manifest, plan, markers, rejects, config, resumed=len(plan) - len(todo),
                         elapsed_s=time.perf_counter() - started)
    _write_reports(out_dir, rejects, summary)
    return summary


def _all_rejects(manifest: Manifest, markers: dict[str, dict]) -> list[dict]:
    rejects = [*(dataclasses.asdict(r) for r in manifest.rejects),
               *(r for marker in markers.values() for r in marker["rejects"])]
    return sorted(rejects, key=lambda r: (r["source"], r["row"]))


def _summarise(manifest: Manifest, plan: list[ShardGroup], markers: dict[str, dict], rejects: list[dict],
               config: IngestConfig, resumed: int, elapsed_s: float) -> dict:
    written_ids = {image_id for marker in markers.values() for image_id in marker["written"]}
    manifest_rejects = [r for r in rejects if r["stage"] != "labs"]
    per_split: dict[str, Counter] = {}
    for row in manifest.rows:
        if row.image_id in written_ids:
            counts = per_split.setdefault(row.split, Counter())
            counts["written"] += 1
            counts[{1: "positive", 0: "negative"}.get(row.positive, "unknown")] += 1
    summary = {
        "manifest": manifest.path.name,
        "rows": manifest.n_rows,
        "written": len(written_ids),
        "rejected": len(manifest_rejects),
        "per_split": {split: dict(counts) for split, counts in sorted(per_split.items())},
        "per_size": {str(size): {split: c["written"] for split, c in sorted(per_split.items())} for size in config.sizes},
        "shards": {split: next(g.count for g in plan if g.split == split) for split in sorted({g.split for g in plan})},
        "reject_reasons": dict(sorted(Counter(r["reason"] for r in manifest_rejects).items())),
        "labs": {**manifest.labs_summary, "rejected_rows": sum(r["stage"] == "labs" for r in rejects)},
        "sizes": list(config.sizes),
        "shard_size": config.shard_size,
        "workers": config.workers,
        "resumed_groups": resumed,
        "elapsed_s": round(elapsed_s, 3),
        "schema_version": SCHEMA_VERSION,
        "bnp_cxr_version": __version__,
    }
    if summary["rows"] != summary["written"] + summary["rejected"]:
        raise RuntimeError(f"row accounting broken: {summary['rows']} rows != "
                           f"{summary['written']} written + {summary['rejected']} rejected")
    return summary


def _write_reports(out_dir: Path, rejects: list[dict], summary: dict) -> None:
    with atomic_path(out_dir / "rejects.csv") as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REJECT_FIELDS)
        writer.writeheader()
        writer.writerows(rejects)
    write_json(out_dir / "summary.json", summary)
