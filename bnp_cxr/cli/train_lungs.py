"""Train the lung segmentation U-Net on images + masks and report held-out Dice.

--data is a folder with index.csv (columns image, mask: relative paths), or a manifest CSV with a
lung_mask_path column. With no arguments: the phantom cohort's work/cohort/manifest.csv. Weights
(.keras plus a .json sidecar) go to --out; never commit weights trained on real images.

    python tools/train_lungs.py                                      # phantom cohort, 256 px
    python tools/train_lungs.py --data ../shared/data/lungs/shenzhen --out /tmp/lungs/unet256.keras
    python tools/attribute.py --lung-model /tmp/lungs/unet256.keras  # masks where a record has none
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import COHORT_DIR, LUNGS_DIR

DEFAULT_DATA = COHORT_DIR / "manifest.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with index.csv, or a manifest CSV with lung_mask_path (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image size in px (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    # 8 filters x 5 levels: the configuration bench/lungs.py measured (held-out Shenzhen Dice 0.956 at 256 px
    # in 31 min on 2 shared CPU cores); 16 x 4 costs about 3x as much per epoch.
    parser.add_argument("--base-filters", type=int, default=8, help="first-level filters (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=5, help="poolings in the U-Net (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam peak learning rate (default: %(default)g)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="held-out fraction (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no training augmentation")
    parser.add_argument("--out", type=Path, help=f"model path (default: {LUNGS_DIR / 'unet{SIZE}.keras'})")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default: %(default)s)")
    return parser


def data_name(data: Path) -> str:
    """What the sidecar records as the training data: the folder's name, or folder/file for a CSV."""
    return data.absolute().name if data.is_dir() else f"{data.absolute().parent.name}/{data.name}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # the parser imports no TensorFlow: --help and usage errors stay fast
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    if not args.data.exists():
        hint = (f"make the phantom cohort with `python tools/make_phantom.py` (writes {DEFAULT_DATA}), "
                "or pass --data FOLDER" if args.data == DEFAULT_DATA else "pass an existing --data")
        print(f"error: no training data at {args.data}: {hint}", file=sys.stderr)
        return 2
    out = args.out or LUNGS_DIR / f"unet{args.size}.keras"
    if out.suffix != ".keras":
        print(f"error: --out must end in .keras, got {out}", file=sys.stderr)
        return 2

    import numpy as np

    from bnp_cxr import lungs
    from bnp_cxr.rejects import Reject

    try:
        rejects: list[Reject] = []
        pairs = lungs.read_mask_folder(args.data, rejects=rejects)
        n_listed = len(pairs) + len(rejects)
        images, masks = lungs.load_pairs(pairs, args.size, rejects=rejects)
    except lungs.LungDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for reject in rejects:
        print(f"skipped {reject.image_path} (mask {reject.mask_path}): {reject.reason}: {reject.detail}")
    print(f"pairs: {n_listed} listed, {len(images)} read, {len(rejects)} skipped; {args.size} px")
    result = lungs.train_lung_model(images, masks, epochs=args.epochs, batch_size=args.batch_size,
                                    val_fraction=args.val_fraction, seed=args.seed, base_filters=args.base_filters,
                                    depth=args.depth, out_path=out, augment=args.augment, learning_rate=args.lr,
                                    data_name=data_name(args.data), verbose=args.verbose)
    scores = result.dice_per_image
    print(f"held-out Dice ({result.n_val} images, {result.n_train} trained on): mean {scores.mean():.4f}, "
          f"median {np.median(scores):.4f}, min {scores.min():.4f}")
    print(f"model: {out}  sidecar: {lungs.sidecar_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
