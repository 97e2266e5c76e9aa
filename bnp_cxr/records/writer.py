"""Manifest rows -> sharded TFRecords at several sizes, with rejects, a summary and resumable progress.

Rows are grouped per split, in manifest order, into shard groups of `shard_size` rows; a group is
written as one shard per size (``{split}-{size}px-{i:05d}-of-{n:05d}.tfrecord``). Every shard is
written under a temporary name and renamed when complete, then a progress marker records the group's
fingerprint, written image IDs and rejects, so ``resume`` redoes only incomplete groups. Files go
through tf.io.gfile, so the output folder may be a URL; the Beam runner (bnp_cxr.records.beam) writes
its shards, markers and reports with the functions here.

Decoding runs in a pool of worker processes (bnp_cxr.records.pool), not in tf.data threads: pydicom and
the JPEG 2000 decoders hold the GIL, so threads give no speed-up (bench/ingest.py measures the parallel
efficiency).
A decoder that kills its worker (segfault in a C codec, os._exit) costs only its row: the pool is
recreated, the rows that were in flight are retried one at a time in a fresh process, and the one that
kills that process too is rejected as `decoder_crashed`. workers=1 is one such process (the same
isolation, no parallelism); workers=0 decodes in this process, where a crashing codec ends the run (the
library default, for small trusted inputs and debugging; the CLI defaults to one process per CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import logging
import math
import os
import posixpath
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Iterator

from bnp_cxr import __version__
from bnp_cxr.data.manifest import ImageRow, Manifest
from bnp_cxr.records.pool import ordered_map
from bnp_cxr.records.prepare import Prepared, prepare_row, prepare_safely
from bnp_cxr.records.schema import SCHEMA_VERSION, SHARD_PATTERN, serialize_example, shard_name
from bnp_cxr.rejects import Reject, rejects_csv
from bnp_cxr.workspace import DEFAULT_SIZES

MIN_SIZE, MAX_SIZE = 64, 1024
PROGRESS_DIR = ".progress"
TEMP_PATTERN = "*.tmp"  # temporary siblings of outputs (_temp_name), left behind by an interrupted run

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
    # What decodes one row: prepare_row's signature (row, sizes, allow_lateral) -> Prepared | Reject. It must be
    # a module-level function: spawned workers import it by module and name (they inherit this process's import path).
    prepare: Callable[..., Prepared | Reject] = prepare_row

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


def decoder_crashed(row: ImageRow, error: BaseException) -> Reject:
    """The reject for a row whose decoding killed a fresh worker process on its own."""
    _log.warning("decoding %s killed its worker process; row %d rejected as decoder_crashed", row.image_path, row.row)
    return Reject(stage="image", reason="decoder_crashed", column="image_path",
                  detail=f"decoding this file killed the worker process (e.g. a segfault in a codec), also when "
                         f"retried alone: {error}")


def row_preparer(config: IngestConfig) -> Callable[[ImageRow], Prepared | Reject]:
    """What a decode worker runs per row: config.prepare, any exception it raises becoming a reject.

    It pickles as prepare.prepare_safely plus config.prepare, so workers import neither this module nor TensorFlow.
    """
    return partial(prepare_safely, sizes=tuple(config.sizes), allow_lateral=config.allow_lateral,
                   prepare=config.prepare)


def image_reject(failure: Reject, row: ImageRow, source: str) -> Reject:
    """A decode worker's reject of a row, named as rejects.csv lists it (manifest name, CSV line, image path)."""
    return dataclasses.replace(failure, source=source, row=row.row, image_path=row.image_path, stage="image")


def serialized_examples(row: ImageRow, prepared: Prepared) -> Iterator[tuple[int, bytes]]:
    """(size, tf.train.Example bytes) of a prepared row, one per size."""
    for size, record in prepared.records.items():
        yield size, serialize_example(row, record, prepared.source_shape, prepared.source_spacing_mm)


# ------------------------------------------------------------------ files, through tf.io.gfile: local paths or URLs

def gfile():
    """tf.io.gfile, imported on first use: planning, option checks and the decode workers need no TensorFlow."""
    import tensorflow as tf

    return tf.io.gfile


def join(*parts: str) -> str:
    """Join output path parts with '/' (posixpath, not os.path: output folders may be URLs such as gs://b/records)."""
    return posixpath.join(*parts)


def output_dir(out_dir: str | os.PathLike) -> str:
    """An output folder as the str these functions take: a local path or a URL, without a trailing '/'."""
    text = os.fspath(out_dir)
    return text.rstrip("/") or text


def _temp_name(path: str) -> str:
    # Unique, not just path + ".tmp": a Beam runner may run a retried bundle beside the original.
    return f"{path}.{uuid.uuid4().hex[:16]}.tmp"


@contextlib.contextmanager
def _renamed_when_done(path: str) -> Iterator[str]:
    """Yield a temporary sibling of `path` to write; renamed over `path` when the block succeeds, else removed."""
    files = gfile()
    temp = _temp_name(path)
    try:
        yield temp
        files.rename(temp, path, overwrite=True)
    except BaseException:
        if files.exists(temp):
            files.remove(temp)
        raise


def write_text(path: str, text: str) -> None:
    """Write `text` as UTF-8 to `path`, atomically: complete under its final name or not there at all."""
    with _renamed_when_done(path) as temp, gfile().GFile(temp, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def open_shard(path: str):
    """A tf.io.TFRecordWriter whose records appear at `path` only once the block succeeds."""
    import tensorflow as tf

    with _renamed_when_done(path) as temp, tf.io.TFRecordWriter(temp) as writer:
        yield writer


def _names(folder: str, pattern: str) -> list[str]:
    return [name for name in gfile().listdir(folder) if fnmatch.fnmatchcase(name, pattern)]


def prepare_out_dir(out_dir: str, plan: list[ShardGroup], config: IngestConfig) -> None:
    """Create out_dir, drop an interrupted run's temporary files, and apply resume / overwrite to existing shards."""
    files, progress = gfile(), join(out_dir, PROGRESS_DIR)
    files.makedirs(progress)
    for folder in (out_dir, progress):
        for leftover in _names(folder, TEMP_PATTERN):
            files.remove(join(folder, leftover))
    existing = [name for name in _names(out_dir, "*.tfrecord")
                if (match := SHARD_PATTERN.match(name)) and int(match["size"]) in config.sizes]
    if existing and not (config.resume or config.overwrite):
        raise FileExistsError(f"{out_dir} already holds {len(existing)} shard(s) for sizes {list(config.sizes)}; "
                              "pass resume to finish them or overwrite to replace them")
    planned = {shard_name(g.split, size, g.index, g.count) for g in plan for size in config.sizes}
    stale = [name for name in existing if config.overwrite or name not in planned]
    for name in stale:
        files.remove(join(out_dir, name))
    if config.overwrite:
        for marker in _names(progress, "*.json"):
            files.remove(join(progress, marker))
    if stale:
        _log.info("removed %d shard(s) not part of this run's plan", len(stale))


def load_marker(out_dir: str, group: ShardGroup, fingerprint: str, sizes: tuple[int, ...]) -> dict | None:
    """A group's progress marker if it matches the fingerprint and every shard it names exists, else None."""
    files, path = gfile(), join(out_dir, PROGRESS_DIR, group.marker_name)
    if not files.exists(path):
        return None
    with files.GFile(path) as handle:
        marker = json.loads(handle.read())
    complete = marker.get("fingerprint") == fingerprint and all(
        files.exists(join(out_dir, shard_name(group.split, size, group.index, group.count))) for size in sizes)
    return marker if complete else None


def save_marker(out_dir: str, group: ShardGroup, fingerprint: str, sizes: tuple[int, ...], written: list[str],
                rejects: list[Reject]) -> dict:
    """Write the progress marker of a group whose shards all exist: its fingerprint, written image IDs, rejects."""
    marker = {"fingerprint": fingerprint, "split": group.split, "index": group.index, "count": group.count,
              "sizes": list(sizes), "rows": len(written) + len(rejects), "written": written,
              "rejects": [reject.as_row() for reject in rejects]}
    write_text(join(out_dir, PROGRESS_DIR, group.marker_name), json.dumps(marker))
    return marker


# ------------------------------------------------------------------------------------------------ a run

def start_run(manifest: Manifest, out_dir: str, config: IngestConfig
              ) -> tuple[list[ShardGroup], dict[str, str], dict[str, dict]]:
    """(plan, fingerprint per marker name, complete markers kept when resuming), out_dir made ready."""
    plan = plan_shards(manifest.rows, config.shard_size)
    prepare_out_dir(out_dir, plan, config)
    fingerprints = {group.marker_name: group_fingerprint(group, config) for group in plan}
    kept = {}
    for group in plan if config.resume else ():
        marker = load_marker(out_dir, group, fingerprints[group.marker_name], config.sizes)
        if marker is not None:
            kept[group.marker_name] = marker
    return plan, fingerprints, kept


def finish_run(manifest: Manifest, out_dir: str, plan: list[ShardGroup], markers: dict[str, dict],
               config: IngestConfig, resumed: int, started: float, **run_facts) -> dict:
    """Write rejects.csv and summary.json (plus run_facts) from every group's marker; returns the summary."""
    rejects = _all_rejects(manifest, markers)
    summary = _summarise(manifest, plan, markers, rejects, config, resumed=resumed,
                         elapsed_s=time.perf_counter() - started)
    summary.update(run_facts)
    write_text(join(out_dir, "rejects.csv"), rejects_csv(rejects))
    write_text(join(out_dir, "summary.json"), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def _write_group(group: ShardGroup, results: Iterator, out_dir: str, config: IngestConfig,
                 fingerprint: str, manifest_name: str, on_row: Callable[[], None]) -> dict:
    written, rejects = [], []
    with contextlib.ExitStack() as stack:
        shards = {size: stack.enter_context(open_shard(join(out_dir, shard_name(group.split, size, group.index,
                                                                                 group.count))))
                  for size in config.sizes}
        for row in group.rows:
            result = next(results)
            if isinstance(result, Reject):
                rejects.append(image_reject(result, row, manifest_name))
            else:
                for size, example in serialized_examples(row, result):
                    shards[size].write(example)
                written.append(row.image_id)
            on_row()
    return save_marker(out_dir, group, fingerprint, config.sizes, written, rejects)


def write_records(manifest: Manifest, out_dir: str | os.PathLike, config: IngestConfig | None = None) -> dict:
    """Write the manifest's rows as sharded TFRecords plus rejects.csv and summary.json; returns the summary."""
    from tqdm.auto import tqdm

    config = config or IngestConfig()
    started = time.perf_counter()
    out_dir = output_dir(out_dir)
    plan, fingerprints, markers = start_run(manifest, out_dir, config)
    todo = [group for group in plan if group.marker_name not in markers]
    results = ordered_map(row_preparer(config), (row for group in todo for row in group.rows), config.workers,
                          on_crash=decoder_crashed)
    with tqdm(total=sum(len(group.rows) for group in todo), unit="img", desc="records",
              disable=not config.progress) as bar:
        for group in todo:
            markers[group.marker_name] = _write_group(group, results, out_dir, config, fingerprints[group.marker_name],
                                                      manifest.path.name, bar.update)
    return finish_run(manifest, out_dir, plan, markers, config, resumed=len(plan) - len(todo), started=started)


def _all_rejects(manifest: Manifest, markers: dict[str, dict]) -> list[Reject]:
    rejects = [*manifest.rejects, *(Reject(**r) for marker in markers.values() for r in marker["rejects"])]
    return sorted(rejects, key=lambda r: (r.source, r.row))


def _summarise(manifest: Manifest, plan: list[ShardGroup], markers: dict[str, dict], rejects: list[Reject],
               config: IngestConfig, resumed: int, elapsed_s: float) -> dict:
    written_ids = {image_id for marker in markers.values() for image_id in marker["written"]}
    manifest_rejects = [r for r in rejects if r.stage != "labs"]
    per_split: dict[str, Counter] = {}
    for row in manifest.rows:
        if row.image_id in written_ids:
            counts = per_split.setdefault(row.split, Counter())
            counts["written"] += 1
            counts[{1: "positive", 0: "negative"}.get(row.positive, "unknown")] += 1
            if math.isnan(row.bnp_pg_ml) and math.isnan(row.bnpp_pg_ml):  # kept by make_tfrecords --unlabelled
                counts["no_lab"] += 1
    summary = {
        "manifest": manifest.path.name,
        "rows": manifest.n_rows,
        "written": len(written_ids),
        "rejected": len(manifest_rejects),
        "per_split": {split: dict(counts) for split, counts in sorted(per_split.items())},
        "per_size": {str(size): {split: c["written"] for split, c in sorted(per_split.items())}
                     for size in config.sizes},
        "shards": {split: next(g.count for g in plan if g.split == split) for split in sorted({g.split for g in plan})},
        "reject_reasons": dict(sorted(Counter(r.reason for r in manifest_rejects).items())),
        "labs": {**manifest.labs_summary, "rejected_rows": sum(r.stage == "labs" for r in rejects)},
        "finding_columns": list(manifest.finding_columns),
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
