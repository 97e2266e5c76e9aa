"""Tiny radiograph-like archives for training tests: a bright 'heart' whose radius grows with the labs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np


def heart_records(root: Path, out: Path, split_sizes: dict[str, int], sizes: tuple[int, ...], *,
                  severities: Callable[[np.random.Generator, int], np.ndarray],
                  bnp_on: Callable[[int], bool], bnpp_on: Callable[[int], bool], seed: int) -> Path:
    """Write 96 x 80 PNGs (one patient each, explicit splits) and their records at `sizes`; returns `out`."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    rng = np.random.default_rng(seed)
    lines = ["patient_id,image_path,study_datetime,bnp,bnpp,split"]
    yy, xx = np.mgrid[:96, :80]
    index = 0
    for split, count in split_sizes.items():
        for severity in severities(rng, count):
            image = rng.normal(20000, 1500, (96, 80))
            image[(yy - 55) ** 2 + (xx - 42) ** 2 < (8 + 18 * severity) ** 2] += 25000
            cv2.imwrite(str(root / f"im{index}.png"), np.clip(image, 0, 65535).astype(np.uint16))
            bnp = f"{10 ** (1.3 + 1.6 * severity):.1f}" if bnp_on(index) else ""
            bnpp = f"{10 ** (1.8 + 2 * severity):.1f}" if bnpp_on(index) else ""
            lines.append(f"P{index},im{index}.png,2021-03-{1 + index % 28:02d},{bnp},{bnpp},{split}")
            index += 1
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    summary = write_records(load_manifest(root / "manifest.csv"), out,
                            IngestConfig(sizes=sizes, shard_size=10, progress=False))
    assert summary["per_size"][str(sizes[0])] == split_sizes
    return out
