"""Train a radiograph -> [log10 BNP, log10 BNPP] regressor on the records of tools/make_tfrecords.py.

With no arguments: reads work/records at 256 px and writes work/runs/size256/ (model.keras, backup/,
config.json, history.csv, logs/). Without a GPU the backbone defaults to small_cnn, with one to resnet152.

    python tools/train.py --size 256
    python tools/train.py --size 64 --epochs 2
    python tools/train.py --config paper --size 512          # ResNet152, ImageNet weights, L1 on log10, Adam
    python tools/train.py --size 256 --resume                # continue after an interruption
    python tools/train.py --size 1024 --mixed-precision bfloat16 --xla   # GPU: bfloat16 compute, XLA-compiled steps

Multi-worker: set TF_CONFIG and run the same command on every machine (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import sys

# Before TensorFlow is imported: its C++ start-up chatter hides the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    from bnp_cxr.models import BACKBONES
    from bnp_cxr.training.config import DEFAULT_RECORDS, MIXED_PRECISION, PRESETS, SCHEDULES, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=None)
    parser.add_argument("--config", dest="preset", choices=sorted(PRESETS),
                        help="a preset; 'paper': resnet152, imagenet, L1 on log10 labels, Adam, the records' split")
    parser.add_argument("--records", dest="records_dir", help=f"records folder (default: {DEFAULT_RECORDS})")
    parser.add_argument("--size", type=int, help=f"image size in px; records must exist at it (default: {d.size})")
    parser.add_argument("--backbone", choices=sorted(BACKBONES),
                        help="default: small_cnn without a GPU, resnet152 with one")
    parser.add_argument("--weights", help="imagenet, none, or a .weights.h5 / .keras file (default: none)")
    parser.add_argument("--epochs", type=int, help=f"default: {d.epochs}")
    parser.add_argument("--batch-size", type=int,
                        help=f"global batch size, split across GPUs and workers (default: {d.batch_size})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default: {d.lr:g}; paper preset 1e-4)")
    parser.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default: {d.schedule})")
    parser.add_argument("--warmup-epochs", type=float, help="linear warm-up from 0 over this many epochs (default: 0)")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                        help="on = float16 compute with loss scaling, bfloat16 = bfloat16 compute; float32 "
                             "variables and outputs either way (default auto: on when a GPU is visible)")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction,
                        help="compile the train / eval steps with XLA (default: off)")
    parser.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction,
                        help="BatchNorm statistics of the global batch, all-reduced across GPUs and workers "
                             "(default: off, per replica)")
    parser.add_argument("--seed", type=int, help=f"default: {d.seed}")
    parser.add_argument("--run-dir", help="run folder (default: work/runs/size{SIZE})")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the run in --run-dir from its last completed epoch")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, help="training augmentation (default: on)")
    parser.add_argument("--loss-weights", type=float, nargs=2, metavar=("BNP", "BNPP"),
                        help="weights of the two outputs in the L1 loss (default: 1 1)")
    parser.add_argument("--dropout", type=float, help=f"dropout before the output layer (default: {d.dropout})")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, help="cache records in memory (default: off)")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the best model on the test split when training ends (default: on)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for that evaluation")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default: 1)")
    return parser


def options_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig options the user gave explicitly (argparse leaves the others None)."""
    skip = {"preset", "resume", "verbose", "evaluate", "n_boot"}
    options = {key: value for key, value in vars(args).items() if value is not None and key not in skip}
    if "weights" in options and options["weights"].lower() == "none":
        options["weights"] = None
    if "loss_weights" in options:
        options["loss_weights"] = tuple(options["loss_weights"])
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bnp_cxr.models import WeightsDownloadError
    from bnp_cxr.training import make_config, train

    try:
        config = make_config(options_from_args(args), preset=args.preset, resume=args.resume)
        result = train(config, verbose=args.verbose)
    except (FileExistsError, FileNotFoundError, ValueError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not result.chief:
        print(f"{result.epochs_completed} of {result.config.epochs} epochs done; the chief writes "
              f"{result.run_dir} and evaluates")
        return 0
    best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
    print(f"{result.epochs_completed} of {result.config.epochs} epochs done; best val loss {best}; "
          f"best model {result.model_path}")
    if args.evaluate and result.epochs_completed >= result.config.epochs:
        from bnp_cxr.evaluation.evaluate import evaluate_run, report_text

        try:
            metrics = evaluate_run(result.run_dir, result.config.records_dir, split="test", n_boot=args.n_boot)
        except (FileNotFoundError, ValueError) as error:  # e.g. no test split: training itself succeeded
            print(f"evaluation skipped: {error}", file=sys.stderr)
            return 0
        print(report_text(metrics, result.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
