"""Evaluate a trained run on the test split: predictions.csv, metrics.json, roc.png, scatter.png in the run folder.

Metrics: Pearson r and MAE of log10 BNPP / BNP; AUC, sensitivity and specificity (Youden point) for
BNPP > 400, BNP > 100 and the combined label; 95% CIs from a patient-level bootstrap.

    python tools/evaluate.py --size 256
    python tools/evaluate.py --run-dir work/runs/size512 --records /data/records --split val --n-boot 5000
    python tools/evaluate.py --run-dir work/shenzhen/runs/size256 --records work/montgomery/records \
        --out work/montgomery/eval     # another site's films (make_manifest.py montgomery ... --split test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import RECORDS_DIR, RUNS_DIR, SPLITS, RunDir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size in px of the run (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path, help=f"run folder with {RunDir.MODEL} and {RunDir.CONFIG} "
                                                     f"(default: {RUNS_DIR / 'size{SIZE}'})")
    parser.add_argument("--records", type=Path,
                        help=f"records folder (default: the run config's records_dir, else {RECORDS_DIR})")
    parser.add_argument("--split", choices=SPLITS, default="test", help="(default: %(default)s)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples, >= 1000 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="prediction batch size (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write predictions.csv, metrics.json and the plots here instead of "
                                                 "the run folder (e.g. for another site's records), leaving the "
                                                 "run's own evaluation and report as they are")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # the parser imports no TensorFlow: --help and usage errors stay fast
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    from bnp_cxr.evaluation.evaluate import evaluate_run, read_run_config, report_text, scores_elsewhere
    from bnp_cxr.evaluation.report import command_line, record_command

    run_dir = args.run_dir or RunDir.for_size(args.size).path
    try:
        config_size = int(read_run_config(run_dir)["size"])
        if config_size != args.size:  # the model's input size decides; say so rather than fail
            print(f"note: {run_dir} was trained at {config_size} px; evaluating at {config_size} px", file=sys.stderr)
        if scores_elsewhere(run_dir, args.out) is None:  # provenance in the report of the run it writes to
            record_command(run_dir, "evaluate", command_line("evaluate", argv))
        result = evaluate_run(run_dir, args.records, split=args.split, n_boot=args.n_boot, seed=args.seed,
                              batch_size=args.batch_size, out_dir=args.out)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report_text(result, run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
