"""Model-randomisation sanity check of the attribution maps (Adebayo et al. 2018) for trained runs.

For each run: the first N test images (deterministic record order), maps of every method from the
trained model and after each cascading randomisation step (head first); writes sanity.csv and
sanity.png to OUT/<run name>/ and prints the table. Maps that stay similar to the trained model's
after randomisation (high Spearman / SSIM) do not depend on what the model learned.

    python tools/sanity_check.py                                   # every run in work/runs
    python tools/sanity_check.py --run work/runs/size256 --n 8 --methods vanilla gradcam --out /tmp/sanity
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

METHOD_CHOICES = ("vanilla", "gradcam", "xrai")  # bnp_cxr.attribution.methods.METHODS (not imported: fast --help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", dest="runs",
                        help="run folder with model.keras and config.json; repeatable "
                             "(default: every folder in --runs-root holding a model.keras)")
    parser.add_argument("--runs-root", type=Path, default=Path("work/runs"), help="(default: %(default)s)")
    parser.add_argument("--records", type=Path, help="records folder (default: the run config's records_dir)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test", help="(default: %(default)s)")
    parser.add_argument("--n", type=int, default=8, help="images: the first N of the split (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHOD_CHOICES,
                        help="(default: all three; XRAI only once bnp_cxr.attribution.xrai exists)")
    parser.add_argument("--target", choices=("bnpp", "bnp"), default="bnpp", help="output explained "
                                                                                  "(default: %(default)s)")
    parser.add_argument("--max-steps", type=int, help="randomise at most this many layer groups (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="re-initialisation seed (default: %(default)s)")
    parser.add_argument("--smoothgrad", action="store_true", help="vanilla gradients with SmoothGrad")
    parser.add_argument("--xrai-impl", choices=("fast", "reference"), default="fast", help="(default: %(default)s)")
    parser.add_argument("--ig-steps", type=int, default=100, help="XRAI's IG steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images / IG steps per model call "
                                                                   "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("work/sanity"), help="(default: %(default)s)")
    return parser


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (sorted) that hold a trained model.keras."""
    return sorted(path.parent for path in root.glob("*/model.keras"))


def first_images(records_dir: Path, split: str, size: int, n: int):
    """The first n images of a split in deterministic record order: (float32 [n, size, size, 1], image_ids)."""
    import numpy as np

    from bnp_cxr.records.reader import make_dataset

    images, ids = [], []
    for batch, _, meta in make_dataset(records_dir, split, size, batch_size=n, deterministic=True, with_metadata=True):
        images.append(batch.numpy())
        ids += [value.decode() for value in meta["image_id"].numpy()]
        if len(ids) >= n:
            break
    if not ids:
        raise ValueError(f"no {split} images at {size} px in {records_dir}")
    return np.concatenate(images)[:n], ids[:n]


def check_run(run: Path, args, methods: tuple[str, ...]):
    """The sanity frame of one run; writes sanity.csv and sanity.png to OUT/<run name>/."""
    from bnp_cxr.attribution.methods import MethodConfig
    from bnp_cxr.attribution.sanity import cascading_randomization, plot_sanity
    from bnp_cxr.evaluation.evaluate import load_run_model, read_run_config

    config = read_run_config(run)
    records = args.records or Path(config.get("records_dir", "work/records"))
    model_path = run / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: train the run first (tools/train.py)")
    images, ids = first_images(records, args.split, int(config["size"]), args.n)
    method_config = MethodConfig(smoothgrad=args.smoothgrad, xrai_impl=args.xrai_impl, ig_steps=args.ig_steps,
                                 batch_size=args.batch_size, seed=args.seed)
    frame = cascading_randomization(load_run_model(model_path), images, methods, target=args.target,
                                    config=method_config, max_steps=args.max_steps, seed=args.seed)
    out = args.out / run.name
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "sanity.csv", index=False, float_format="%.4f")
    title = (f"{run.name}: {config.get('backbone', '?')} {config['size']} px, {len(ids)} {args.split} images, "
             f"target {args.target}")
    plot_sanity(frame, out / "sanity.png", title=title)
    return frame, out, title


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        print(f"error: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    xrai_ready = importlib.util.find_spec("bnp_cxr.attribution.xrai") is not None
    methods = tuple(args.methods or (m for m in METHOD_CHOICES if m != "xrai" or xrai_ready))
    if not args.methods and not xrai_ready:
        print("note: bnp_cxr.attribution.xrai is not available; checking vanilla and gradcam", file=sys.stderr)
    if "xrai" in methods and not xrai_ready:
        print("error: XRAI needs bnp_cxr.attribution.xrai, which is not available; pass --methods vanilla gradcam",
              file=sys.stderr)
        return 2
    runs = args.runs or find_runs(args.runs_root)
    if not runs:
        print(f"error: no run folder with a model.keras in {args.runs_root}; pass --run", file=sys.stderr)
        return 2
    import pandas as pd

    for run in runs:
        try:
            frame, out, title = check_run(run, args, methods)
        except (FileNotFoundError, ValueError, KeyError) as error:
            print(f"error: {run}: {error}", file=sys.stderr)
            return 2
        with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 40):
            print(f"{title}\n{frame.to_string(index=False, float_format=lambda value: f'{value:.3f}')}")
        print(f"wrote {out / 'sanity.csv'} and {out / 'sanity.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
