"""Tiny archives and run folders for tests: PNG archives with their records, and untrained runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from bnp_cxr.workspace import RunDir

SMALL_CNN_SIZE = 32  # px: the input size of conftest's `model` fixture
REPO = Path(__file__).resolve().parents[1]


def run_documented_tool(tool: str, *args: str, cwd: Path, salt: str) -> subprocess.CompletedProcess:
    """Run tools/`tool` as a user would, with `salt` as the site secret; asserts that it succeeded."""
    env = {**os.environ, "BNP_CXR_SALT": salt, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("BNP_CXR_SALT_FILE", None)
    done = subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{tool} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def png_records(root: Path, out: Path, header: str, entries: Iterable[tuple[str, np.ndarray, str]],
                sizes: tuple[int, ...], shard_size: int = 8) -> dict:
    """Write each (file name, 16-bit image, manifest line) under root, root/manifest.csv, and its records in out.

    Returns write_records' summary.
    """
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    lines = [header]
    for name, image, line in entries:
        cv2.imwrite(str(root / name), image)
        lines.append(line)
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return write_records(load_manifest(root / "manifest.csv"), out,
                         IngestConfig(sizes=sizes, shard_size=shard_size, progress=False))


def heart_records(root: Path, out: Path, split_sizes: dict[str, int], sizes: tuple[int, ...], *,
                  severities: Callable[[np.random.Generator, int], np.ndarray],
                  bnp_on: Callable[[int], bool], bnpp_on: Callable[[int], bool], seed: int,
                  findings: bool = False) -> Path:
    """Write 96 x 80 PNGs with a bright 'heart' whose radius grows with the labs (one patient each, explicit
    splits) and their records at `sizes`; returns `out`. findings=True adds finding columns: cardiomegaly
    (severity > 0.5) and edema (the same, left empty on every third image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :80]

    def entries():
        index = 0
        for split, count in split_sizes.items():
            for severity in severities(rng, count):
                image = rng.normal(20000, 1500, (96, 80))
                image[(yy - 55) ** 2 + (xx - 42) ** 2 < (8 + 18 * severity) ** 2] += 25000
                bnp = f"{10 ** (1.3 + 1.6 * severity):.1f}" if bnp_on(index) else ""
                bnpp = f"{10 ** (1.8 + 2 * severity):.1f}" if bnpp_on(index) else ""
                flags = f",{int(severity > 0.5)},{'' if index % 3 == 0 else int(severity > 0.5)}" if findings else ""
                yield (f"im{index}.png", np.clip(image, 0, 65535).astype(np.uint16),
                       f"P{index},im{index}.png,2021-03-{1 + index % 28:02d},{bnp},{bnpp},{split}{flags}")
                index += 1

    header = "patient_id,image_path,study_datetime,bnp,bnpp,split" + (",cardiomegaly,edema" if findings else "")
    summary = png_records(root, out, header, entries(), sizes, shard_size=10)
    assert summary["per_size"][str(sizes[0])] == split_sizes
    return out


def write_run(run_dir: Path, model, size: int, records_dir: Path, **config) -> Path:
    """A run folder as tools/train.py leaves it: `model` as model.keras, and config.json (size, records, config)."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    model.save(run.model)
    run.config.write_text(json.dumps({"size": size, "records_dir": str(records_dir), **config}))
    return run.path
