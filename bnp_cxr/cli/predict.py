"""Estimate serum BNP and NT-proBNP (pg/mL) for new radiographs, with an attribution overlay per image.

    python tools/predict.py IMAGE [IMAGE ...]                      # the run in work/runs/size256
    python tools/predict.py scans/*.dcm --run work/runs/size512 --method xrai --out work/predictions

Prints, per image, the estimated BNP and BNPP, the call (positive: BNPP > 400 or BNP > 100 pg/mL)
and the overlay PNG written (named by a pseudonymous key of the input path); files that cannot be
read are listed with the reason, and the rest go on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import BNP_THRESHOLD_PG_ML, BNPP_THRESHOLD_PG_ML, PREDICTIONS_DIR, RunDir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="DICOM / PNG / JPEG radiographs (frontal)")
    parser.add_argument("--run", type=Path, default=RunDir.for_size(256).path, help="run folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=PREDICTIONS_DIR, help="overlay folder (default: %(default)s)")
    parser.add_argument("--method", choices=("vanilla", "gradcam", "xrai"), default="gradcam",
                        help="attribution drawn on the overlay (default: %(default)s)")
    parser.add_argument("--target", choices=("bnpp", "bnp"), default="bnpp",
                        help="output explained (default: %(default)s)")
    parser.add_argument("--lung-model", type=Path, help="lung U-Net (tools/train_lungs.py): draw the lung contour")
    parser.add_argument("--bnpp-threshold", type=float, default=BNPP_THRESHOLD_PG_ML,
                        help="positive if BNPP > this pg/mL (default: %(default)s)")
    parser.add_argument("--bnp-threshold", type=float, default=BNP_THRESHOLD_PG_ML,
                        help="positive if BNP > this pg/mL (default: %(default)s)")
    parser.add_argument("--allow-lateral", action="store_true", help="predict lateral views too (not trained on them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # the parser imports no TensorFlow: --help and usage errors stay fast
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    from bnp_cxr.data.labs import PositivityThresholds
    from bnp_cxr.predict import format_predictions, predict_images

    try:
        predictions, rejected = predict_images(
            args.run, args.images, args.out, method=args.method, target=args.target,
            lung_model=str(args.lung_model) if args.lung_model else None,
            thresholds=PositivityThresholds(bnpp_pg_ml=args.bnpp_threshold, bnp_pg_ml=args.bnp_threshold),
            allow_lateral=args.allow_lateral)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_predictions(predictions, rejected))
    return 0 if predictions else 1


if __name__ == "__main__":
    sys.exit(main())
