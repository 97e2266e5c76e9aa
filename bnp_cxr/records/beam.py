"""Manifest rows -> the same sharded TFRecords, rejects.csv and summary.json through an Apache Beam pipeline.

The launcher validates the manifest (small), plans the shard groups exactly as the local writer does
(bnp_cxr.records.writer.plan_shards) and stages the rows as JSON lines; workers decode and resize
(writer._prepare_safely, so a row fails the same way), then a CoGroupByKey per (split, index, size)
gathers a shard's serialised examples, sorts them into manifest order and writes the shard under a
unique temporary name renamed when complete (tf.io.gfile, so gs:// and hdfs:// outputs work, and a
retried bundle replaces rather than appends). Per group, once its shards exist, a progress marker in
the local writer's format is written; the launcher builds rejects.csv and summary.json from those
markers with the writer's own functions. Markers and fingerprints match the local writer, so
``resume`` works across runners. Beam model: https://beam.apache.org/documentation/programming-guide/

Workers read images with plain ``open`` at the manifest's absolute paths, so on a remote runner the
archive must be mounted at the same path on every worker, and workers need bnp_cxr installed
(``--setup_file ./setup.py``). A decoder that kills its process fails the bundle, which the runner
retries and then fails the job; the local runner's ``decoder_crashed`` isolation has no Beam analogue.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import posixpath
import time
import uuid
from operator import itemgetter
from typing import Callable, Iterable, Sequence

from bnp_cxr.data.manifest import ImageRow, Manifest, Reject
from bnp_cxr.records.prepare import Failure, Prepared
from bnp_cxr.records.schema import SHARD_PATTERN, serialize_example, shard_name
from bnp_cxr.records.writer import (PROGRESS_DIR, REJECT_FIELDS, IngestConfig, ShardGroup, _all_rejects,
                                    _prepare_safely, _summarise, group_fingerprint, plan_shards)

ROWS_FILE = "beam-rows.jsonl"
OUTCOME = "outcome"
GroupKey = tuple[str, int, int]  # split, index, count

_log = logging.getLogger(__name__)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _join(*parts: str) -> str:
    # posixpath, not os.path: output folders may be URLs (gs://bucket/records) on any launcher OS.
    return posixpath.join(*parts)


def _write_atomically(path: str, text: str) -> None:
    gfile = _gfile()
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    with gfile.GFile(temp, "w") as handle:
        handle.write(text)
    gfile.rename(temp, path, overwrite=True)


def pipeline_options(args: Sequence[str]):
    """Beam PipelineOptions from command-line flags; unknown or malformed flags or runners raise ValueError."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("Apache Beam is not installed; pip install 'bnp-cxr[beam]'",
                                  name=error.name) from error

    options = PipelineOptions(list(args))
    usage = io.StringIO()
    try:
        # Beam only warns about flags no options class knows ("Discarding unparseable args"); a typo in
        # --temp_location would then silently run somewhere else, so compare with everything given.
        with contextlib.redirect_stderr(usage):
            known = options.get_all_options()
            given = options.get_all_options(retain_unknown_options=True)
    except SystemExit:  # argparse printed a page of usage, then "...: error: argument --x: invalid int value"
        reason = usage.getvalue().strip().rpartition("error: ")[2]
        raise ValueError(f"invalid Beam pipeline option: {reason}") from None
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown Beam pipeline option(s) {['--' + name for name in unknown]}; see "
                         "https://beam.apache.org/documentation/runners/ for each runner's options")
    runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    known_runners = {name.lower() for name in StandardOptions.KNOWN_RUNNER_NAMES}
    # Beam resolves names case-insensitively, with or without the "Runner" suffix, or as a dotted class path.
    if "." not in runner and not {runner.lower(), runner.lower() + "runner"} & known_runners:
        raise ValueError(f"unknown Beam runner {runner!r}; use local, beam, one of "
                         f"{StandardOptions.KNOWN_RUNNER_NAMES} or a dotted PipelineRunner class path")
    return options


def _stage_rows(path: str, groups: Iterable[ShardGroup]) -> int:
    lines = []
    for group in groups:
        for position, row in enumerate(group.rows):
            fields = dataclasses.asdict(row)
            fields["patient_id"] = ""  # the raw ID never leaves the launcher; records use patient_key
            lines.append(json.dumps({"group": [group.split, group.index, group.count], "position": position,
                                     "row": fields}))
    _write_atomically(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _prepare(line: str, sizes: tuple[int, ...], allow_lateral: bool, prepare: Callable[..., Prepared | Failure],
             manifest_name: str) -> Iterable:
    """One staged row -> ((split, index, count, size), (position, example bytes)) per size + its outcome."""
    from apache_beam import pvalue

    item = json.loads(line)
    row, (split, index, count), position = ImageRow(**item["row"]), item["group"], item["position"]
    result = _prepare_safely(row, sizes, allow_lateral, prepare)
    if isinstance(result, Failure):
        reject = Reject(manifest_name, row.row, row.image_path, "image", result.reason, result.column, result.detail)
        yield pvalue.TaggedOutput(OUTCOME, ((split, index, count), (position, "reject", dataclasses.asdict(reject))))
        return
    for size, record in result.records.items():
        yield (split, index, count, size), (position, serialize_example(row, record, result.source_shape,
                                                                        result.source_spacing_mm))
    yield pvalue.TaggedOutput(OUTCOME, ((split, index, count), (position, "written", row.image_id)))


def _write_shard(element: tuple, out_dir: str) -> tuple[GroupKey, int]:
    """Write one shard (examples in manifest order) under a unique temporary name, then rename it."""
    import tensorflow as tf

    (split, index, count, size), grouped = element
    final = _join(out_dir, shard_name(split, size, index, count))
    temp = f"{final}.tmp-{uuid.uuid4().hex}"
    with tf.io.TFRecordWriter(temp) as writer:
        for _, serialized in sorted(grouped["examples"], key=itemgetter(0)):
            writer.write(serialized)
    tf.io.gfile.rename(temp, final, overwrite=True)
    return (split, index, count), size


def _write_marker(element: tuple, out_dir: str, fingerprints: dict[str, str], sizes: tuple[int, ...]) -> str:
    """Write a group's progress marker (the local writer's format) once all its shards exist."""
    (split, index, count), grouped = element
    if sorted(grouped["shards"]) != sorted(sizes):
        raise RuntimeError(f"{split} group {index}: shards written for sizes {sorted(grouped['shards'])}, "
                           f"expected {sorted(sizes)}")
    name = ShardGroup(split, index, count, ()).marker_name
    outcomes = sorted(grouped[OUTCOME], key=itemgetter(0))
    marker = {"fingerprint": fingerprints[name], "split": split, "index": index, "count": count,
              "sizes": list(sizes), "rows": len(outcomes),
              "written": [value for _, kind, value in outcomes if kind == "written"],
              "rejects": [value for _, kind, value in outcomes if kind == "reject"]}
    _write_atomically(_join(out_dir, PROGRESS_DIR, name), json.dumps(marker))
    return name


def _prepare_out_dir(out_dir: str, plan: list[ShardGroup], config: IngestConfig) -> None:
    # The local writer's rules (writer._prepare_out_dir), through gfile so that URLs work.
    gfile = _gfile()
    progress = _join(out_dir, PROGRESS_DIR)
    gfile.makedirs(progress)
    for leftover in [*gfile.glob(_join(out_dir, "*.tmp*")), *gfile.glob(_join(progress, "*.tmp*"))]:
        gfile.remove(leftover)  # an interrupted earlier run's partial files
    existing = [name for name in gfile.listdir(out_dir)
                if (match := SHARD_PATTERN.match(name)) and int(match["size"]) in config.sizes]
    if existing and not (config.resume or config.overwrite):
        raise FileExistsError(f"{out_dir} already holds {len(existing)} shard(s) for sizes {list(config.sizes)}; "
                              "pass resume to finish them or overwrite to replace them")
    planned = {shard_name(g.split, size, g.index, g.count) for g in plan for size in config.sizes}
    stale = [name for name in existing if config.overwrite or name not in planned]
    for name in stale:
        gfile.remove(_join(out_dir, name))
    if config.overwrite:
        for marker in gfile.glob(_join(progress, "*.json")):
            gfile.remove(marker)
    if stale:
        _log.info("removed %d shard(s) not part of this run's plan", len(stale))


def _read_marker(out_dir: str, group: ShardGroup, fingerprint: str, sizes: tuple[int, ...]) -> dict | None:
    gfile = _gfile()
    path = _join(out_dir, PROGRESS_DIR, group.marker_name)
    if not gfile.exists(path):
        return None
    with gfile.GFile(path) as handle:
        marker = json.loads(handle.read())
    complete = marker.get("fingerprint") == fingerprint and all(
        gfile.exists(_join(out_dir, shard_name(group.split, size, group.index, group.count))) for size in sizes)
    return marker if complete else None


def _write_reports(out_dir: str, rejects: list[dict], summary: dict) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=REJECT_FIELDS)
    writer.writeheader()
    writer.writerows(rejects)
    _write_atomically(_join(out_dir, "rejects.csv"), table.getvalue())
    _write_atomically(_join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")


def build_pipeline(pipeline, rows_path: str, groups: list[ShardGroup], out_dir: str, config: IngestConfig,
                   fingerprints: dict[str, str], manifest_name: str):
    """Add the record-writing transforms to a Beam pipeline; returns the PCollection of written marker names."""
    import apache_beam as beam

    prepared = (pipeline
                | "ReadRows" >> beam.io.ReadFromText(rows_path)
                # A small file is one split: without a shuffle the runner fuses reading and decoding
                # and a single worker would decode every row.
                | "Spread" >> beam.Reshuffle()
                | "Prepare" >> beam.FlatMap(_prepare, tuple(config.sizes), config.allow_lateral, config.prepare,
                                            manifest_name).with_outputs(OUTCOME, main="examples"))
    # Every planned shard is a key, so a group whose rows were all rejected still gets its (empty) shards.
    planned = pipeline | "PlannedShards" >> beam.Create(
        [((g.split, g.index, g.count, size), None) for g in groups for size in config.sizes])
    shards = ({"planned": planned, "examples": prepared.examples}
              | "ByShard" >> beam.CoGroupByKey()
              | "WriteShards" >> beam.Map(_write_shard, out_dir))
    return ({"shards": shards, OUTCOME: prepared[OUTCOME]}
            | "ByGroup" >> beam.CoGroupByKey()
            | "WriteMarkers" >> beam.Map(_write_marker, out_dir, fingerprints, tuple(config.sizes)))


def write_records_beam(manifest: Manifest, out_dir: str, config: IngestConfig | None = None,
                       pipeline_args: Sequence[str] = ()) -> dict:
    """write_records through Apache Beam (runner and its settings from pipeline_args); returns the summary."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    config = config or IngestConfig()
    started = time.perf_counter()
    options = pipeline_options(pipeline_args)
    runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    out_dir = str(out_dir).rstrip("/")
    plan = plan_shards(manifest.rows, config.shard_size)
    _prepare_out_dir(out_dir, plan, config)
    fingerprints = {group.marker_name: group_fingerprint(group, config) for group in plan}
    kept = {} if not config.resume else {
        g.marker_name: m for g in plan if (m := _read_marker(out_dir, g, fingerprints[g.marker_name], config.sizes))}
    todo = [group for group in plan if group.marker_name not in kept]
    if todo:
        rows_path = _join(out_dir, PROGRESS_DIR, ROWS_FILE)
        n_rows = _stage_rows(rows_path, todo)
        _log.info("Beam %s: %d rows in %d shard groups", runner, n_rows, len(todo))
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, rows_path, todo, out_dir, config, fingerprints, manifest.path.name)
        pipeline.run().wait_until_finish()
        _gfile().remove(rows_path)
    markers = {**kept}
    for group in todo:
        marker = _read_marker(out_dir, group, fingerprints[group.marker_name], config.sizes)
        if marker is None:
            raise RuntimeError(f"the Beam pipeline finished without a complete {group.marker_name} in {out_dir}")
        markers[group.marker_name] = marker
    rejects = _all_rejects(manifest, markers)
    summary = _summarise(manifest, plan, markers, rejects, config, resumed=len(kept),
                         elapsed_s=time.perf_counter() - started)
    # Parallelism is the runner's (workers, autoscaling), not config.workers.
    summary.update(workers=None, runner=f"beam:{runner}")
    _write_reports(out_dir, rejects, summary)
    return summary
