"""Manifest rows -> the same sharded TFRecords, rejects.csv and summary.json through an Apache Beam pipeline.

The launcher validates the manifest (small), plans the shard groups and prepares the output folder
exactly as the local writer does (bnp_cxr.records.writer.start_run) and stages the rows as JSON
lines; workers decode and resize (writer.row_preparer, so a row fails the same way), then a
CoGroupByKey per (split, index, size) gathers a shard's serialised examples, sorts them into manifest
order and writes the shard with the writer's open_shard (a unique temporary name renamed when
complete, through tf.io.gfile, so gs:// and hdfs:// outputs work and a retried bundle replaces rather
than appends). Per group, once its shards exist, the writer's save_marker writes its progress marker;
the launcher then writes rejects.csv and summary.json with writer.finish_run. Every file is thus the
local writer's, byte for byte, except the run facts in summary.json (elapsed_s, workers, runner), and
``resume`` works across runners. Beam model: https://beam.apache.org/documentation/programming-guide/

Workers read images with plain ``open`` at the manifest's absolute paths, so on a remote runner the
archive must be mounted at the same path on every worker, and workers need bnp_cxr installed
(``--setup_file ./setup.py``). A decoder that kills its process fails the bundle, which the runner
retries and then fails the job; the local runner's ``decoder_crashed`` isolation has no Beam analogue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import time
from operator import itemgetter
from typing import Callable, Iterable, Sequence

from bnp_cxr.data.manifest import ImageRow, Manifest
from bnp_cxr.records.prepare import Prepared
from bnp_cxr.records.schema import shard_name
from bnp_cxr.records.writer import (PROGRESS_DIR, IngestConfig, ShardGroup, finish_run, gfile, image_reject, join,
                                    load_marker, open_shard, output_dir, row_preparer, save_marker, serialized_examples,
                                    start_run, write_text)
from bnp_cxr.rejects import Reject

ROWS_FILE = "beam-rows.jsonl"
OUTCOME = "outcome"
GroupKey = tuple[str, int, int]  # split, index, count

_log = logging.getLogger(__name__)


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
    write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _prepare(line: str, preparer: Callable[[ImageRow], Prepared | Reject], manifest_name: str) -> Iterable:
    """One staged row -> ((split, index, count, size), (position, example bytes)) per size + its outcome."""
    from apache_beam import pvalue

    item = json.loads(line)
    row, (split, index, count), position = ImageRow(**item["row"]), item["group"], item["position"]
    result = preparer(row)
    if isinstance(result, Reject):
        yield pvalue.TaggedOutput(OUTCOME, ((split, index, count), (position, "reject",
                                                                    image_reject(result, row, manifest_name))))
        return
    for size, example in serialized_examples(row, result):
        yield (split, index, count, size), (position, example)
    yield pvalue.TaggedOutput(OUTCOME, ((split, index, count), (position, "written", row.image_id)))


def _write_shard(element: tuple, out_dir: str) -> tuple[GroupKey, int]:
    """Write one shard, its examples in manifest order (the writer's open_shard: a unique temporary name, renamed)."""
    (split, index, count, size), grouped = element
    with open_shard(join(out_dir, shard_name(split, size, index, count))) as writer:
        for _, serialized in sorted(grouped["examples"], key=itemgetter(0)):
            writer.write(serialized)
    return (split, index, count), size


def _write_marker(element: tuple, out_dir: str, fingerprints: dict[str, str], sizes: tuple[int, ...]) -> str:
    """Write a group's progress marker (the writer's save_marker) once all its shards exist."""
    (split, index, count), grouped = element
    if sorted(grouped["shards"]) != sorted(sizes):
        raise RuntimeError(f"{split} group {index}: shards written for sizes {sorted(grouped['shards'])}, "
                           f"expected {sorted(sizes)}")
    group = ShardGroup(split, index, count, ())
    outcomes = sorted(grouped[OUTCOME], key=itemgetter(0))
    save_marker(out_dir, group, fingerprints[group.marker_name], sizes,
                written=[value for _, kind, value in outcomes if kind == "written"],
                rejects=[value for _, kind, value in outcomes if kind == "reject"])
    return group.marker_name


def build_pipeline(pipeline, rows_path: str, groups: list[ShardGroup], out_dir: str, config: IngestConfig,
                   fingerprints: dict[str, str], manifest_name: str):
    """Add the record-writing transforms to a Beam pipeline; returns the PCollection of written marker names."""
    import apache_beam as beam

    prepared = (pipeline
                | "ReadRows" >> beam.io.ReadFromText(rows_path)
                # A small file is one split: without a shuffle the runner fuses reading and decoding
                # and a single worker would decode every row.
                | "Spread" >> beam.Reshuffle()
                | "Prepare" >> beam.FlatMap(_prepare, row_preparer(config), manifest_name
                                            ).with_outputs(OUTCOME, main="examples"))
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
    out_dir = output_dir(out_dir)
    plan, fingerprints, kept = start_run(manifest, out_dir, config)
    todo = [group for group in plan if group.marker_name not in kept]
    if todo:
        rows_path = join(out_dir, PROGRESS_DIR, ROWS_FILE)
        n_rows = _stage_rows(rows_path, todo)
        _log.info("Beam %s: %d rows in %d shard groups", runner, n_rows, len(todo))
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, rows_path, todo, out_dir, config, fingerprints, manifest.path.name)
        pipeline.run().wait_until_finish()
        gfile().remove(rows_path)
    markers = {**kept}
    for group in todo:
        marker = load_marker(out_dir, group, fingerprints[group.marker_name], config.sizes)
        if marker is None:
            raise RuntimeError(f"the Beam pipeline finished without a complete {group.marker_name} in {out_dir}")
        markers[group.marker_name] = marker
    # Parallelism is the runner's (workers, autoscaling), not config.workers.
    return finish_run(manifest, out_dir, plan, markers, config, resumed=len(kept), started=started, workers=None,
                      runner=f"beam:{runner}")
