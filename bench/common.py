"""Shared benchmark plumbing: input selection, result JSON + a printed table."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Benchmarks read public data only; their own salt keeps them clear of the public demo salt (phantom only).
os.environ.setdefault("BNP_CXR_SALT", "bnp-cxr-benchmarks")


def phantom_manifest(cohort_dir: Path, workers: int) -> tuple[Path, Path]:
    """The phantom cohort's manifest and labs, generating the cohort when absent."""
    from bnp_cxr.phantom import generate_cohort

    generate_cohort(cohort_dir, workers=workers, progress=True)
    return cohort_dir / "manifest.csv", cohort_dir / "labs.csv"


# CPU vector extensions that change TensorFlow's CPU speed severalfold (oneDNN picks its kernels by them).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def cpu() -> dict:
    """The CPU's model name, family and model number (a virtual machine's name can be just "AMD EPYC", for Zen 3
    and Zen 4 alike) and which VECTOR_FLAGS it has (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", platform.processor()),
            "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            "cpu_vector_flags": [flag for flag in VECTOR_FLAGS if flag in flags]}


def machine() -> dict:
    """Where a result was measured: Python, OS, CPUs (count, model, vector extensions), TensorFlow's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tensorflow = version("tensorflow")
    except PackageNotFoundError:
        tensorflow = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(), **cpu(),
            "tensorflow": tensorflow}


def report(name: str, result: dict, rows: list[dict], columns: list[str]) -> Path:
    """Write bench/results/{name}.json and print the rows as a table."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **result,
              "rows": rows}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    widths = [max(len(column), *(len(_fmt(row.get(column))) for row in rows)) for column in columns]
    print(" | ".join(column.ljust(width) for column, width in zip(columns, widths)))
    print("-+-".join("-" * width for width in widths))
    for row in rows:
        print(" | ".join(_fmt(row.get(column)).ljust(width) for column, width in zip(columns, widths)))
    for key, value in result.items():
        if key not in ("rows", "machine", "benchmark"):
            print(f"{key}: {value}")
    print(f"-> {path}")
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)
