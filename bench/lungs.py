"""Lung U-Net on Shenzhen: held-out Dice (mean, median, min) and time at one size (goal: Dice >= 0.95 at 256 px).

All 566 images, 15 % held out by a seeded permutation (one image per patient), the U-Net at full input
resolution. Weights go to --out (default /tmp/lungs/unet{size}.keras): never into the repository, they
derive from the images.

    python bench/lungs.py                                   # 256 px, 30 epochs, 8 base filters, depth 5
    python bench/lungs.py --size 128 --epochs 20 --name lungs_128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lungs" / "shenzhen"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Shenzhen folder (index.csv, images/, masks/)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam peak learning rate (cosine decay)")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="weights (default: /tmp/lungs/unet{size}.keras)")
    parser.add_argument("--name", default="lungs", help="result file bench/results/NAME.json")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    args = parser.parse_args()
    if not (args.data / "index.csv").is_file():
        sys.exit(f"error: no Shenzhen data at {args.data} (index.csv missing); pass --data")
    out = args.out or Path(f"/tmp/lungs/unet{args.size}.keras")
    if REPO in out.resolve().parents:
        sys.exit(f"error: {out} is inside the repository; weights derived from Shenzhen must stay outside it")

    import numpy as np

    from bnp_cxr import lungs
    from bnp_cxr.rejects import Reject

    started = time.perf_counter()
    rejects: list[Reject] = []
    images, masks = lungs.load_pairs(lungs.read_mask_folder(args.data), args.size, rejects=rejects)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    result = lungs.train_lung_model(images, masks, epochs=args.epochs, batch_size=args.batch_size,
                                    val_fraction=args.val_fraction, seed=args.seed, base_filters=args.base_filters,
                                    depth=args.depth, learning_rate=args.lr, out_path=out, data_name=args.data.name,
                                    verbose=args.verbose)
    train_s = time.perf_counter() - started
    held_out = result.val_indices
    two_lungs = lungs.dice_per_image(lungs.predict_lung_masks(result.model, images[held_out], keep_components=2),
                                     masks[held_out])
    scores = result.dice_per_image
    val_dice = result.history["val_dice"]
    row = {"size_px": args.size, "epochs": args.epochs, "best_epoch": int(np.argmax(val_dice)) + 1,
           "base_filters": args.base_filters, "depth": args.depth, "batch_size": args.batch_size,
           "params": result.model.count_params(), "n_train": result.n_train, "n_val": result.n_val,
           "dice_mean": float(scores.mean()), "dice_median": float(np.median(scores)), "dice_min": float(scores.min()),
           "dice_mean_2cc": float(two_lungs.mean()), "dice_min_2cc": float(two_lungs.min()),
           "n_val_ge_095": int((scores >= 0.95).sum()), "load_s": round(load_s, 1), "train_s": round(train_s, 1)}
    columns = ["size_px", "epochs", "best_epoch", "base_filters", "depth", "n_train", "n_val", "dice_mean",
               "dice_median", "dice_min", "dice_mean_2cc", "train_s"]
    report(args.name, {"data": args.data.name, "goal": "held-out Dice >= 0.95 at 256 px", "rejects": len(rejects),
                       "seed": args.seed, "lr": args.lr, "weights": str(out),
                       "val_dice_per_epoch": [round(v, 4) for v in val_dice]}, [row], columns)


if __name__ == "__main__":
    main()
