"""Train a radiograph -> [log10 BNP, log10 BNPP] regressor on the records of tools/make_tfrecords.py.

With no arguments: reads work/records at 256 px and writes work/runs/size256/ (model.keras, backup/,
config.json, history.csv, logs/). Without a GPU the recipe defaults to an ensemble of 5 small_cnn models
(members/member{k}/ each such a folder, model.keras their mean), with one to a single resnet152.

    python tools/train.py --size 256
    python tools/train.py --size 64 --epochs 2 --members 1     # one model instead of the CPU ensemble
    python tools/train.py --config paper --size 512          # ResNet152, ImageNet weights, L1 on log10, Adam
    python tools/train.py --size 256 --resume                # continue after an interruption
    python tools/train.py --size 1024 --mixed-precision bfloat16 --xla   # GPU: bfloat16 compute, XLA-compiled steps

Multi-worker: set TF_CONFIG and run the same command on every machine (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import sys

from bnp_cxr.console import quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    from bnp_cxr.training.arguments import add_training_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=None)
    add_training_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors answer before TensorFlow loads
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    from bnp_cxr.models import WeightsDownloadError
    from bnp_cxr.training import make_config, train
    from bnp_cxr.training.arguments import training_options

    try:
        config = make_config(training_options(args), preset=args.preset, resume=args.resume)
        result = train(config, verbose=args.verbose)
    except (FileExistsError, FileNotFoundError, ValueError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not result.chief:
        print(f"{result.epochs_completed} of {result.config.epochs} epochs done; the chief writes "
              f"{result.run_dir} and evaluates")
        return 0
    kept = "last epoch" if result.config.keep == "last" else "lowest val loss"
    if result.config.members > 1:
        print(f"{result.epochs_completed} of {result.config.epochs} epochs done by every member; model (mean of "
              f"{result.config.members} members, each at its {kept}) {result.model_path}")
    else:
        best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
        print(f"{result.epochs_completed} of {result.config.epochs} epochs done; best val loss {best}; "
              f"model ({kept}) {result.model_path}")
    from bnp_cxr.evaluation.report import command_line, record_command

    record_command(result.run_dir, "train", command_line("train", argv))  # provenance in the run's report
    if args.evaluate and result.epochs_completed >= result.config.epochs:
        from bnp_cxr.evaluation.evaluate import evaluate_run, report_text

        try:
            metrics = evaluate_run(result.run_dir, result.config.records_dir, split="test", n_boot=args.n_boot)
        except (FileNotFoundError, ValueError) as error:  # e.g. no test split: training itself succeeded
            print(f"evaluation skipped: {_no_test_split(result.config.records_dir) or error}", file=sys.stderr)
            return 0
        print(report_text(metrics, result.run_dir))
    return 0


def _no_test_split(records_dir: str) -> str | None:
    """Why a run has nothing to score when its records hold no test split by design; None otherwise."""
    from bnp_cxr.records.reader import read_summary

    per_split = read_summary(records_dir).get("per_split")
    if not per_split or per_split.get("test", {}).get("written", 0):
        return None
    return (f"the records in {records_dir} have no test split (their --split-fractions or split column left none); "
            "score the model on other records with tools/evaluate.py --run-dir RUN --records DIR --out DIR")


if __name__ == "__main__":
    sys.exit(main())
