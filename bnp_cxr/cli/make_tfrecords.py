"""Radiographs + BNP/BNPP labs -> sharded TFRecords per image size.

With no arguments: generates the phantom cohort into work/cohort (if absent) and writes records at
64, 128 and 256 px into work/records. See data_manifests/README.md for the manifest and record schema.

    python tools/make_tfrecords.py
    python tools/make_tfrecords.py --manifest archive/manifest.csv --labs archive/labs.csv --sizes paper
    python tools/make_tfrecords.py --runner beam --direct_num_workers 2 --direct_running_mode multi_processing
    python tools/make_tfrecords.py --manifest /mnt/archive/manifest.csv --out gs://bucket/records \
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp --setup_file ./setup.py

With a Beam runner, flags this tool does not know are Beam pipeline options (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import (BNP_THRESHOLD_PG_ML, BNPP_THRESHOLD_PG_ML, COHORT_DIR, DEFAULT_SIZES, RECORDS_DIR,
                               SPLIT_FRACTIONS, parse_sizes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="manifest CSV (default: the phantom cohort, generated if absent)")
    parser.add_argument("--labs", type=Path, help="labs table CSV (patient_id, lab_datetime, test, value)")
    parser.add_argument("--out", default=str(RECORDS_DIR),
                        help="output folder; a gs:// or hdfs:// URL with a Beam runner (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", default=[str(size) for size in DEFAULT_SIZES],
                        help="square sizes in px, 64..1024, or 'paper' (64 128 256 512 1024); default: "
                             + " ".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--shard-size", type=int, default=128, help="radiographs per shard (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decode processes (default: all cores, %(default)s); a file that crashes its codec "
                             "is rejected as decoder_crashed. 0 decodes in this process, where such a file ends the "
                             "run")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep complete shards of an interrupted run, redo the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace existing shards of these sizes")
    default_split = " ".join(f"{fraction:g}" for fraction in SPLIT_FRACTIONS)
    parser.add_argument("--split-fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        default=SPLIT_FRACTIONS,
                        help=f"patient-level hashed split of the rows without a split column (default: "
                             f"{default_split}); e.g. 0.875 0.125 0 trains a final model on every patient, its val "
                             "split only monitoring, and scores it on another set's records (evaluate.py --records); "
                             "1 0 0 fits every patient with no val split (runs that keep their last epoch)")
    parser.add_argument("--window-hours", type=float, default=24.0,
                        help="labs table pairing: nearest lab within +-H hours of the study (default: %(default)s)")
    parser.add_argument("--bnpp-threshold", type=float, default=BNPP_THRESHOLD_PG_ML,
                        help="positive if BNPP > this pg/mL (default: %(default)s)")
    parser.add_argument("--bnp-threshold", type=float, default=BNP_THRESHOLD_PG_ML,
                        help="positive if BNP > this pg/mL (default: %(default)s)")
    parser.add_argument("--allow-lateral", action="store_true", help="keep lateral views (rejected by default)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="keep rows with neither BNP nor BNPP (rejected as no_label by default): records of an "
                             "archive's films without lab results, for tools/train.py --pretrain-extra; such records "
                             "cannot train on their own")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept absolute manifest paths and ../ paths that leave the manifest's folder "
                             "(rejected by default)")
    parser.add_argument("--cohort", type=Path, default=COHORT_DIR,
                        help="where the phantom cohort lives when no --manifest is given (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--runner", default="local",
                        help="local (decode process pool; default), beam (Apache Beam's DirectRunner) or any Beam "
                             "runner name (DataflowRunner, FlinkRunner, SparkRunner, PrismRunner, FnApiRunner, ...); "
                             "with Beam, unknown flags pass through as pipeline options")
    return parser


def manifest_salt(manifest_path: Path) -> str | None:
    """None for the phantom cohort (its cohort.json beside the manifest): the demo salt unless one is set. Any
    other manifest needs the site salt (MissingSaltError, a ValueError, says how to set one)."""
    from bnp_cxr.data.privacy import site_salt
    from bnp_cxr.phantom.cohort import COHORT_SUMMARY

    return None if (Path(manifest_path).parent / COHORT_SUMMARY).is_file() else site_salt()


def beam_args(runner: str, extra: list[str]) -> list[str]:
    """Beam pipeline flags for a --runner value other than 'local' plus the flags argparse did not know."""
    return [*extra, "--runner", "DirectRunner" if runner == "beam" else runner]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()  # imports no TensorFlow: --help and usage errors stay fast
    args, extra = parser.parse_known_args(argv)
    if extra and args.runner == "local":
        parser.error(f"unrecognized arguments: {' '.join(extra)} (Beam pipeline options need --runner beam)")
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from bnp_cxr.data.labs import PositivityThresholds
    from bnp_cxr.data.manifest import ManifestConfig, ManifestError, SplitConfig, load_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    if args.runner != "local":  # a bad Beam option fails now, not after the cohort and manifest work
        from bnp_cxr.records.beam import pipeline_options

        try:
            pipeline_options(beam_args(args.runner, extra))
        except (ValueError, ModuleNotFoundError) as error:
            parser.error(str(error))
    try:  # bad sizes or settings fail before any cohort work
        split = SplitConfig(fractions=tuple(args.split_fractions))
        ingest = IngestConfig(sizes=parse_sizes(args.sizes), shard_size=args.shard_size, workers=args.workers,
                              resume=args.resume, overwrite=args.overwrite, allow_lateral=args.allow_lateral,
                              progress=not args.no_progress)
    except (ValueError, argparse.ArgumentTypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    manifest_path, labs_path = args.manifest, args.labs
    if manifest_path is None:
        from bnp_cxr.phantom import generate_cohort

        print(f"No --manifest: using the built-in phantom cohort in {args.cohort} (synthetic, no patient data).")
        generate_cohort(args.cohort, workers=max(args.workers, 1), progress=not args.no_progress)
        manifest_path, labs_path = args.cohort / "manifest.csv", labs_path or args.cohort / "labs.csv"
    try:
        manifest = load_manifest(manifest_path, labs_path, ManifestConfig(
            thresholds=PositivityThresholds(bnpp_pg_ml=args.bnpp_threshold, bnp_pg_ml=args.bnp_threshold),
            split=split, pairing_window_hours=args.window_hours, allow_lateral=args.allow_lateral,
            allow_outside_root=args.allow_outside_root, salt=manifest_salt(manifest_path),
            keep_unlabelled=args.unlabelled))
        if args.runner == "local":
            summary = write_records(manifest, args.out, ingest)
        else:
            from bnp_cxr.records.beam import write_records_beam

            summary = write_records_beam(manifest, args.out, ingest, beam_args(args.runner, extra))
    except (ManifestError, FileExistsError, FileNotFoundError, ValueError, argparse.ArgumentTypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from bnp_cxr.evaluation.report import describe_source, write_source

    write_source(args.out, describe_source(manifest_path, labs_path, manifest.finding_columns))  # for run reports
    print(format_summary(summary, args.out))
    return 0


def format_summary(summary: dict, out_dir: Path) -> str:
    """A short human-readable account of a run."""
    lines = [f"{summary['rows']} manifest rows: {summary['written']} written, {summary['rejected']} rejected "
             f"({summary['elapsed_s']:.1f} s, {summary['resumed_groups']} shard groups kept from an earlier run)"]
    for split, counts in summary["per_split"].items():
        no_lab = f" ({counts['no_lab']} without labs)" if counts.get("no_lab") else ""
        lines.append(f"  {split:5s} {counts.get('written', 0):6d} images  positive {counts.get('positive', 0)}, "
                     f"negative {counts.get('negative', 0)}, unknown {counts.get('unknown', 0)}{no_lab}")
    if summary["reject_reasons"]:
        lines.append("  rejects: " + json.dumps(summary["reject_reasons"]))
    lines.append(f"records for sizes {summary['sizes']} in {out_dir}; see summary.json and rejects.csv there")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
