"""Ingest cost: make_tfrecords per image vs the floor, and parallel efficiency of 2 workers vs 1.

Floor = bare pydicom decode (`ds.pixel_array`) + cv2 INTER_AREA resize to every size, of the same
files (the radiograph and, where the row has them, its mask PNGs: cv2.imread + resize), in one process. Goals (issue #2): ours(1 worker) <= 1.15x floor; efficiency(2) >= 85%.

    python bench/ingest.py                  # first N written rows of the phantom cohort
    python bench/ingest.py --manifest M.csv --labs L.csv --n 200 --sizes 64 128 256 512 1024
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import phantom_manifest, report

from bnp_cxr.workspace import COHORT_DIR


def floor_seconds(rows: list, sizes: tuple[int, ...]) -> float:
    """Bare decode + resize of every file of the rows, one process."""
    import cv2
    import pydicom

    def resize_to_sizes(pixels) -> None:
        for size in sizes:
            scale = size / max(pixels.shape)
            cv2.resize(pixels, (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA)

    started = time.perf_counter()
    for row in rows:
        dataset = pydicom.dcmread(row.abs_path, force=True)
        if "TransferSyntaxUID" not in dataset.file_meta:  # files without a meta header (as imaging.py does)
            dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        resize_to_sizes(dataset.pixel_array)
        for mask_path in (row.lung_mask_path, row.component_mask_path):
            if mask_path:
                resize_to_sizes(cv2.imread(mask_path, cv2.IMREAD_UNCHANGED))
    return time.perf_counter() - started


def ours_seconds(manifest, sizes: tuple[int, ...], workers: int) -> float:
    """make_tfrecords' writer on the same rows; the elapsed time it reports (TensorFlow already imported)."""
    from bnp_cxr.records.writer import IngestConfig, write_records

    with tempfile.TemporaryDirectory() as out:
        summary = write_records(manifest, out, IngestConfig(sizes=sizes, workers=workers, progress=False))
    if summary["rejected"]:  # a rejected row is work not done: the comparison would flatter us
        raise RuntimeError(f"{summary['rejected']} rows rejected during the benchmark: {summary['reject_reasons']}")
    return summary["elapsed_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--labs", type=Path)
    parser.add_argument("--cohort", type=Path, default=COHORT_DIR)
    parser.add_argument("--n", type=int, default=60, help="radiographs to time (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=2, help="best of R runs (default: %(default)s)")
    args = parser.parse_args()

    import tensorflow as tf  # noqa: F401  imported up front: not part of the per-image cost

    from bnp_cxr.data.manifest import load_manifest

    manifest_path, labs_path = args.manifest, args.labs
    if manifest_path is None:
        manifest_path, labs_path = phantom_manifest(args.cohort, workers=2)
    manifest = load_manifest(manifest_path, labs_path)
    # Only rows that decode: rejects would make the floor and ours do different work.
    from bnp_cxr.data import imaging

    rows = []
    for row in manifest.rows:
        try:
            imaging.read_radiograph(row.abs_path)
        except imaging.RadiographError:
            continue
        rows.append(row)
        if len(rows) == args.n:
            break
    manifest = replace(manifest, rows=rows, rejects=[], n_rows=len(rows))
    sizes = tuple(args.sizes)
    floor = min(floor_seconds(rows, sizes) for _ in range(args.repeats))
    one = min(ours_seconds(manifest, sizes, 1) for _ in range(args.repeats))
    two = min(ours_seconds(manifest, sizes, 2) for _ in range(args.repeats))
    n = len(rows)
    table = [
        {"variant": "floor (pydicom/imread + cv2.resize)", "workers": 1, "s_per_image": floor / n, "x_floor": 1.0},
        {"variant": "make_tfrecords", "workers": 1, "s_per_image": one / n, "x_floor": one / floor},
        {"variant": "make_tfrecords", "workers": 2, "s_per_image": two / n, "x_floor": two / floor},
    ]
    efficiency = one / (2 * two)
    report("ingest", {
        "n_images": n, "sizes": list(sizes), "source": str(manifest_path.name),
        "ratio_vs_floor": round(one / floor, 3), "goal_ratio_vs_floor": 1.15,
        "parallel_efficiency_2_workers": round(efficiency, 3), "goal_parallel_efficiency": 0.85,
        "meets_goals": bool(one / floor <= 1.15 and efficiency >= 0.85),
    }, table, ["variant", "workers", "s_per_image", "x_floor"])


if __name__ == "__main__":
    main()
