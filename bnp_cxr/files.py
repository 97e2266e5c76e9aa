"""Atomic file writes: outputs appear under their final name complete or not at all.

A job killed mid-write (preemption, kill -9) leaves at most a `*.tmp` sibling, which the next run
overwrites; readers and `--resume` never see a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; renamed over `path` when the block succeeds."""
    path = Path(path)
    temp = path.with_name(path.name + suffix)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, document: object) -> None:
    """Write `document` as indented UTF-8 JSON with a final newline, atomically."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
