"""Attribution maps of trained runs on a fixed test sample: vanilla gradients, Grad-CAM, XRAI.

With no arguments: every run in work/runs (one per image size), 16 test images, outputs in
work/attribution/: maps/{run}/{image_id}_{method}.npz, in_lung_per_image.csv, in_lung.csv (per
method x size, patient-bootstrap 95 % CIs), in_lung_trend.png and panels/{image_id}.png/.pdf.

    python tools/attribute.py
    python tools/attribute.py --run work/runs/size256 --methods gradcam xrai --n 32 --target bnp
    python tools/attribute.py --lung-model work/lungs/unet256.keras      # records without lung masks
    python tools/attribute.py --shard 0/4 ... ; python tools/attribute.py --merge   # split over machines
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnp_cxr.workspace import ATTRIBUTION_DIR, RUNS_DIR, SPLITS


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    from bnp_cxr.attribution.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="folder of run folders (default: %(default)s)")
    parser.add_argument("--run", type=Path, nargs="+", help="explain these run folders instead of all of --runs")
    parser.add_argument("--records", type=Path, help="records folder (default: each run's own)")
    parser.add_argument("--out", type=Path, default=ATTRIBUTION_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--n", type=int, default=16, help="test images in the sample (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--seed", type=int, default=0, help="sample, SmoothGrad and bootstrap seed")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--target", choices=("bnpp", "bnp"), default="bnpp",
                        help="model output to explain: log10 BNPP (default) or log10 BNP")
    parser.add_argument("--smoothgrad", action="store_true", help="SmoothGrad instead of plain vanilla gradients")
    parser.add_argument("--conv-layer", help="Grad-CAM layer (default: the last spatial feature map)")
    parser.add_argument("--xrai", choices=("fast", "reference"), default="fast",
                        help="fast XRAI (same maps) or the saliency library's own path")
    parser.add_argument("--batch-size", type=int, default=32, help="model batch for gradients (default: %(default)s)")
    parser.add_argument("--top-fraction", type=float, default=0.10,
                        help="top fraction of pixels for in-lung metric (ii) and XRAI panels (default: %(default)s)")
    parser.add_argument("--lung-model", type=Path, help="lung U-Net (tools/train_lungs.py) for records without masks")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--no-panels", action="store_true", help="skip the figure panels")
    shards = parser.add_mutually_exclusive_group()
    shards.add_argument("--shard", type=parse_shard, help="explain shard I of N of the sample (e.g. 0/4)")
    shards.add_argument("--merge", action="store_true", help="combine the finished shards in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bnp_cxr.attribution.methods import MethodConfig
    from bnp_cxr.attribution.run import AttributionConfig, attribute, find_runs, merge, run_info

    try:
        if args.merge:
            summary = merge(args.out)
        else:
            config = AttributionConfig(
                methods=tuple(args.methods), target=args.target, n_images=args.n, split=args.split, seed=args.seed,
                top_fraction=args.top_fraction, n_boot=args.n_boot, shard=args.shard or (0, 1),
                panels=not args.no_panels, lung_model=str(args.lung_model) if args.lung_model else None,
                method=MethodConfig(smoothgrad=args.smoothgrad, conv_layer=args.conv_layer, xrai_impl=args.xrai,
                                    batch_size=args.batch_size, seed=args.seed))
            run_dirs = args.run or find_runs(args.runs)
            if not run_dirs:
                raise FileNotFoundError(f"no trained runs in {args.runs}: train one first, e.g. "
                                        "python tools/train.py --size 256")
            summary = attribute([run_info(path, args.records) for path in run_dirs], args.out, config,
                                progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary, args.out))
    return 0


def format_summary(summary: dict, out: Path) -> str:
    """What was written, and the in-lung table when there is one."""
    import pandas as pd

    lines = [f"explained {summary['images']} image(s) of a {summary.get('sample', summary['images'])}-image sample: "
             f"{summary['maps']} maps under {out / 'maps'}"]
    if "aggregate" in summary:
        table = pd.read_csv(summary["aggregate"])
        columns = [c for c in ("method", "size", "n_images", "mass_in_lung_fraction", "top_in_lung_fraction",
                               "lung_area_fraction") if c in table]
        lines += ["", table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"), "",
                  f"in-lung attention: {summary['aggregate']}"]
    elif "per_image" in summary:
        lines.append(f"per-image table: {summary['per_image']} (no lung masks: no in-lung aggregate)")
    if summary.get("panels"):
        lines.append(f"figure panels: {len(summary['panels'])} files under {out / 'panels'}")
    if "aggregate" not in summary and "per_image" not in summary:
        lines.append(f"shard done; when all shards are, run: python tools/attribute.py --merge --out {out}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
