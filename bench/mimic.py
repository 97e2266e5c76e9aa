"""Streaming MIMIC-IV labevents: the builder's labs step vs a bare pyarrow streaming read, rows/s and peak RSS.

Generates hosp/labevents.csv.gz in the published MIMIC-IV 2.x / 3.x columns (bnp_cxr.data.sources.mimic.schema)
with realistic shares: NT-proBNP (itemid 50963) is 0.5 % of the rows, ~200 other items the rest, 300,000
patients of whom 60,000 have radiographs. Then, each in a fresh process: a bare `pyarrow.csv.open_csv` read of
the file (default options, batches counted), the same read of only the six columns the builder reads, and the
builder's `stream_labevents` (those columns, item and patient filter, value mapping). Peak RSS is each process's
high-water mark (VmHWM). Goals (issue #13): builder rows/s >= 0.7x the bare read, peak RSS < 1 GB and flat from
the smallest to the largest file (<= 1.2x).

    python bench/mimic.py                       # 2 M and 20 M rows, best of 2 runs each
    python bench/mimic.py --rows 2000000 10000000 --repeats 3 --keep work/bench_mimic
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from common import report

from bnp_cxr.data.sources.mimic import schema

CHUNK_ROWS = 1_000_000
N_SUBJECTS, WITH_RADIOGRAPHS_EVERY = 300_000, 5  # every 5th patient has radiographs: 60,000
FIRST_SUBJECT = 10_000_000
NTPROBNP_SHARE = 0.005
GOAL_RATIO, GOAL_RSS_MB, FLAT_RATIO = 0.7, 1024, 1.2
VARIANTS = ("bare", "bare_columns", "builder")


def _chunk(rng: np.random.Generator, start: int, n: int):
    """One pyarrow table of n labevents rows (every published column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    itemid = np.where(rng.random(n) < NTPROBNP_SHARE, schema.NTPROBNP_ITEMID, rng.integers(50_800, 51_000, n))
    number = np.round(rng.lognormal(5.5, 1.5, n), 1)
    value = pc.cast(pa.array(number), pa.string())
    censored = rng.random(n) < 0.01
    value = pc.if_else(pa.array(censored), pa.array(np.full(n, "<50")), value)
    valuenum = pc.if_else(pa.array(censored), pa.array(np.full(n, None, dtype=object), pa.float64()), pa.array(number))
    seconds = rng.integers(0, 10 * 365 * 86_400, n)
    chart = pa.array((np.datetime64("2180-01-01T00:00:00") + seconds.astype("timedelta64[s]")))
    chart_text = pc.strftime(chart, format="%Y-%m-%d %H:%M:%S")
    columns = {
        "labevent_id": pa.array(np.arange(start + 1, start + n + 1)),
        "subject_id": pa.array(FIRST_SUBJECT + rng.integers(0, N_SUBJECTS, n)),
        "hadm_id": pa.array(20_000_000 + rng.integers(0, 500_000, n)),
        "specimen_id": pa.array(rng.integers(1, 99_999_999, n)),
        "itemid": pa.array(itemid), "order_provider_id": pa.array(np.full(n, "P4X2QZ")),
        "charttime": chart_text, "storetime": chart_text,
        "value": value, "valuenum": valuenum,
        "valueuom": pa.array(np.where(itemid == schema.NTPROBNP_ITEMID, "pg/mL", "mg/dL")),
        "ref_range_lower": pa.array(np.full(n, 0.5)), "ref_range_upper": pa.array(np.full(n, 1.2)),
        "flag": pa.array(np.where(rng.random(n) < 0.2, "abnormal", "")), "priority": pa.array(np.full(n, "ROUTINE")),
        "comments": pa.array(np.where(rng.random(n) < 0.05, "___", "")),
    }
    return pa.table([columns[name] for name in schema.LABEVENTS_COLUMNS], names=list(schema.LABEVENTS_COLUMNS))


def generate(path: Path, rows: int, seed: int = 0) -> Path:
    """Write a gzipped labevents with `rows` rows, chunk by chunk (bounded memory; gzip level 1 to save time)."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: one gzip member
    with open(path.with_suffix(".tmp"), "wb") as handle:
        for start in range(0, rows, CHUNK_ROWS):
            table = _chunk(rng, start, min(CHUNK_ROWS, rows - start))
            text = pa.BufferOutputStream()
            pacsv.write_csv(table, text, pacsv.WriteOptions(include_header=start == 0, quoting_style="needed"))
            handle.write(deflate.compress(text.getvalue().to_pybytes()))
        handle.write(deflate.flush())
    path.with_suffix(".tmp").rename(path)  # a half-written file is never taken for a complete one
    return path


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over fork + exec, so a child
    would report the generating parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is


def measure(kind: str, path: Path) -> dict:
    """One measurement in this process: rows, seconds, kept rows, peak RSS in MB."""
    from pyarrow import csv as pacsv

    from bnp_cxr.data.sources.mimic.labevents import stream_labevents

    subjects = set(range(FIRST_SUBJECT, FIRST_SUBJECT + N_SUBJECTS, WITH_RADIOGRAPHS_EVERY))
    started = time.perf_counter()  # imports and the subject set are not part of the read
    if kind == "bare":
        rows = kept = sum(batch.num_rows for batch in pacsv.open_csv(str(path)))
    elif kind == "bare_columns":  # the bare read of only the columns the builder reads
        options = pacsv.ConvertOptions(include_columns=list(schema.LABEVENTS_REQUIRED))
        rows = kept = sum(batch.num_rows for batch in pacsv.open_csv(str(path), convert_options=options))
    else:
        scan = stream_labevents(path, {schema.NTPROBNP_ITEMID: "BNPP"}, subjects, path.with_name("labs.csv"))
        rows, kept = scan.rows_read, sum(scan.usable.values())
    seconds = time.perf_counter() - started
    return {"rows": rows, "kept": kept, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_child(kind: str, path: Path) -> dict:
    """measure() in a fresh process, so that each peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, "--measure", kind, str(path)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant and size; the fastest counts")
    parser.add_argument("--keep", type=Path, help="folder for the generated files (default: a temp folder, removed)")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return 0
    rows_out = []
    with tempfile.TemporaryDirectory() as temp:
        folder = args.keep or Path(temp)
        for rows in args.rows:
            path = folder / f"labevents_{rows}.csv.gz"
            if not path.is_file():
                started = time.perf_counter()
                generate(path, rows)
                print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s")
            for kind in VARIANTS:
                # The best of --repeats runs, each in a fresh process: the machine is shared, the best is the cost.
                result = min((run_child(kind, path) for _ in range(args.repeats)), key=lambda r: r["seconds"])
                assert result["rows"] == rows, result
                rows_out.append({"rows": rows, "variant": kind, "seconds": round(result["seconds"], 2),
                                 "rows_per_s": round(rows / result["seconds"]), "kept_rows": result["kept"],
                                 "peak_rss_mb": round(result["peak_rss_mb"], 1), "gz_mib": round(path.stat().st_size
                                                                                                  / 2**20, 1)})
    by = {(row["rows"], row["variant"]): row for row in rows_out}
    ratios = {str(rows): round(by[rows, "builder"]["rows_per_s"] / by[rows, "bare"]["rows_per_s"], 3)
              for rows in args.rows}
    rss = [by[rows, "builder"]["peak_rss_mb"] for rows in args.rows]
    columns_ratios = {str(rows): round(by[rows, "builder"]["rows_per_s"] / by[rows, "bare_columns"]["rows_per_s"], 3)
                      for rows in args.rows}
    summary = {"repeats": args.repeats, "speed_vs_bare": ratios, "speed_vs_bare_same_columns": columns_ratios, "builder_peak_rss_mb": dict(zip(map(str, args.rows), rss)),
               "rss_largest_over_smallest": round(rss[-1] / rss[0], 3),
               "goals_met": {"speed": min(ratios.values()) >= GOAL_RATIO, "rss_under_1gb": max(rss) < GOAL_RSS_MB,
                             "rss_flat": rss[-1] / rss[0] <= FLAT_RATIO}}
    report("mimic", summary, rows_out, ["rows", "variant", "seconds", "rows_per_s", "kept_rows", "peak_rss_mb",
                                        "gz_mib"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
