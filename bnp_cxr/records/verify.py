"""Read-back checks of a local records folder: whole shards that match their progress markers, comparable examples.

The writer renames a shard into place only once it is complete and records each finished shard group
in a marker under PROGRESS_DIR; these functions check that promise after the fact (e.g. after a run
was killed) and read every example back as bytes, so two folders can be compared record by record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bnp_cxr.records.schema import SHARD_PATTERN, parse_example
from bnp_cxr.records.writer import PROGRESS_DIR


def progress_markers(records_dir: str | os.PathLike) -> dict[str, dict]:
    """The progress markers of complete shard groups, by file name; ValueError if one is unreadable."""
    found = {}
    for path in (Path(records_dir) / PROGRESS_DIR).glob("*.json"):
        try:
            found[path.name] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # renamed into place atomically: never partial
            raise ValueError(f"progress marker {path} is unreadable") from None
    return found


def check_final_shards(records_dir: str | os.PathLike) -> tuple[int, int]:
    """(shards, shards not yet in a marker); ValueError if a final-named shard is partial or contradicts its marker."""
    import tensorflow as tf

    recorded = progress_markers(records_dir)
    shards = unmarked = 0
    for path in sorted(Path(records_dir).glob("*.tfrecord")):
        match = SHARD_PATTERN.match(path.name)
        if not match:
            raise ValueError(f"unexpected file under a final shard name: {path.name}")
        try:
            count = sum(1 for raw in tf.data.TFRecordDataset(str(path)) if parse_example(raw) is not None)
        except tf.errors.DataLossError as error:
            raise ValueError(f"partial shard visible under its final name: {path.name}: {error}") from None
        shards += 1
        marker = recorded.get(f"{match['split']}-{match['index']}-of-{match['count']}.json")
        if marker is None:  # complete, renamed before its group's marker was written
            unmarked += 1
        elif count != len(marker["written"]):
            raise ValueError(f"{path.name}: {count} records, its marker says {len(marker['written'])}")
    return shards, unmarked


def read_examples(records_dir: str | os.PathLike, canonical: bool = True) -> dict[tuple[str, int], bytes]:
    """Every record of every final shard as {(image_id, size in px): bytes}; ValueError on a duplicate.

    canonical: the Example re-serialized with sorted feature keys, i.e. its content. The stored bytes
    (canonical=False) also depend on the protobuf map order of the writing process.
    """
    import tensorflow as tf

    examples: dict[tuple[str, int], bytes] = {}
    for path in sorted(Path(records_dir).glob("*.tfrecord")):
        size = int(SHARD_PATTERN.match(path.name)["size"])
        for raw in tf.data.TFRecordDataset(str(path)):
            key = (parse_example(raw)["image_id"].numpy().decode(), size)
            if key in examples:
                raise ValueError(f"{key} written twice in {records_dir}")
            stored = raw.numpy()
            examples[key] = tf.train.Example.FromString(stored).SerializeToString(deterministic=True) \
                if canonical else stored
    return examples
