"""Resolution study (Huynh et al., MIDL 2022): one model per image size, each evaluated on the test split.

Trains (or reuses) work/runs/size{N} for every size, as tools/train.py does, evaluates each on the
test split, and writes work/study/resolution.md (table), resolution.csv and resolution.png (metrics vs
size). A run that finished with the same settings is reused; an interrupted one is resumed; one with
other settings is refused unless --retrain. Records must exist at every size (tools/make_tfrecords.py).

    python tools/resolution_study.py                                  # 64 128 256, small_cnn on a CPU
    python tools/resolution_study.py --sizes paper --config paper     # 64..1024, ResNet152 (GPU)
    python tools/resolution_study.py --sizes 64 128 --epochs 5 --runs /tmp/runs --out /tmp/study
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import (ATTRIBUTION_DIR, COHORT_DIR, DEFAULT_SIZES, RECORDS_DIR, RUNS_DIR, STUDY_DIR, RunDir,
                               parse_sizes)


def build_parser() -> argparse.ArgumentParser:
    from bnp_cxr.attribution.names import AGGREGATE
    from bnp_cxr.training.arguments import add_training_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=[str(size) for size in DEFAULT_SIZES],
                        help="image sizes in px, or 'paper' (64 128 256 512 1024); default: "
                             + " ".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="runs root: one size{N} folder per size "
                                                                    "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=STUDY_DIR, help="report folder (default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="delete and retrain the run of every size")
    parser.add_argument("--in-lung", type=Path, default=ATTRIBUTION_DIR / AGGREGATE,
                        help="tools/attribute.py's in_lung.csv: its in-lung attention per method becomes extra "
                             "columns for the sizes it covers, when newer than those runs' models "
                             "(default: %(default)s, used if present)")
    parser.add_argument("--make-records", action="store_true",
                        help=f"write missing records from the phantom cohort ({COHORT_DIR}, generated if absent) "
                             f"into --records (default {RECORDS_DIR}) instead of stopping")
    add_training_arguments(parser, per_run=False,
                           title="training options, as in tools/train.py (the same for every size)")
    return parser


def in_lung_columns(path: Path, runs_root: Path, sizes: list[int]) -> dict[int, dict[str, str]]:
    """In-lung columns from an attribution table for the sizes whose run is older than it; the rest say why not."""
    if not path.is_file():
        print(f"in-lung columns: no {path} (run tools/attribute.py after training to add them)")
        return {}
    import pandas as pd

    from bnp_cxr.attribution.inlung import study_columns

    columns = study_columns(pd.read_csv(path), metrics=("mass_in_lung_fraction", "top_in_lung_fraction"))
    kept, stale = {}, []
    for size in sizes:
        model = RunDir.for_size(size, runs_root).model
        if size in columns and model.is_file() and model.stat().st_mtime <= path.stat().st_mtime:
            kept[size] = columns[size]
        elif size in columns:
            stale.append(size)
    if stale:
        print(f"in-lung columns left out at {stale} px: their runs are newer than {path} or missing "
              "(rerun tools/attribute.py)")
    print(f"in-lung columns from {path} at {sorted(kept)} px" if kept else f"in-lung columns: none usable in {path}")
    return kept


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors answer before TensorFlow loads
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    from bnp_cxr.data.manifest import ManifestError
    from bnp_cxr.evaluation.study import (missing_records, records_command, run_study, shared_settings,
                                          write_phantom_records, write_report)
    from bnp_cxr.models import WeightsDownloadError
    from bnp_cxr.training.arguments import training_options

    started = time.perf_counter()
    try:
        sizes = parse_sizes(args.sizes)
    except argparse.ArgumentTypeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = training_options(args)
    records_dir = Path(options.get("records_dir", RECORDS_DIR))
    missing = missing_records(records_dir, sizes)
    if missing and args.make_records:
        print(f"writing phantom-cohort records at {sorted(missing)} px into {records_dir} (cohort: {COHORT_DIR})")
        try:
            summary = write_phantom_records(records_dir, sorted(missing), COHORT_DIR)
        except (ManifestError, FileExistsError, FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{summary['written']} images written, {summary['rejected']} rejected ({records_dir / 'summary.json'})")
        missing = missing_records(records_dir, sizes)
    if missing:
        gaps = "; ".join(f"{size} px: no {', '.join(splits)}" for size, splits in sorted(missing.items()))
        print(f"error: records missing in {records_dir} ({gaps}). Write them with\n"
              f"  {records_command(records_dir, missing)}\nor pass --make-records to write them from the phantom "
              "cohort.", file=sys.stderr)
        return 2
    try:
        outcomes, paths = run_study(sizes, options, args.runs, args.out, preset=args.preset, n_boot=args.n_boot,
                                    retrain=args.retrain, verbose=args.verbose)
        extra = in_lung_columns(args.in_lung, args.runs, sizes)  # after training: a retrained run makes it stale
        if extra:
            paths = write_report([outcome.metrics for outcome in outcomes], args.out,
                                 shared_settings([outcome.config for outcome in outcomes]), extra)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from bnp_cxr.evaluation.report import command_line
    from bnp_cxr.evaluation.report_study import add_study_to_reports

    reports = add_study_to_reports([outcome.run_dir for outcome in outcomes], args.out,
                                   command_line("resolution_study", argv))
    print(paths["markdown"].read_text())
    done = ", ".join(f"{outcome.size} {outcome.action} ({outcome.seconds:.0f} s)" for outcome in outcomes)
    print(f"sizes: {done}; study took {time.perf_counter() - started:.0f} s")
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    for report in reports:
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
