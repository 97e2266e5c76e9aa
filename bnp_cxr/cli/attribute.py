"""Attribution maps of trained runs on a fixed test sample: vanilla gradients, Grad-CAM, XRAI.

With no arguments: every run in work/runs (one per image size), 16 test images, outputs in
work/attribution/: maps/{run}/{image_id}_{method}.npz, in_lung_per_image.csv, in_lung.csv (per
method x size, patient-bootstrap 95 % CIs), in_lung_trend.png and panels/{image_id}.png/.pdf.

    python tools/attribute.py
    python tools/attribute.py --run work/runs/size256 --methods gradcam xrai --n 32 --target bnp
    python tools/attribute.py --lung-model work/lungs/unet256.keras      # records without lung masks
    python tools/attribute.py --shard 0/4 ... ; python tools/attribute.py --merge   # split over machines
    python tools/attribute.py --scorecard --n 16    # every method scored: scorecard.csv, scorecard.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import ATTRIBUTION_DIR, RUNS_DIR, SANITY_DIR, SPLITS


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def parse_ig_steps(text: str) -> int | str:
    """'auto' or a step count >= 1."""
    if text == "auto":
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"--ig-steps takes a count >= 1 or 'auto', got {text!r}")
    return steps


def build_parser() -> argparse.ArgumentParser:
    from bnp_cxr.attribution.names import ALL_METHODS, METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="folder of run folders (default: %(default)s)")
    parser.add_argument("--run", type=Path, nargs="+", help="explain these run folders instead of all of --runs")
    parser.add_argument("--records", type=Path, help="records folder (default: each run's own)")
    parser.add_argument("--out", type=Path, default=ATTRIBUTION_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--n", type=int, default=16, help="test images in the sample (default: %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--seed", type=int, default=0, help="sample, SmoothGrad and bootstrap seed")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS,
                        help=f"default: {' '.join(METHODS)}; with --scorecard every method")
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
    parser.add_argument("--scorecard", action="store_true",
                        help="score every method (localisation, faithfulness, randomisation, stability; "
                             "docs/scorecard.md) into scorecard.csv and scorecard.png")
    parser.add_argument("--ig-steps", type=parse_ig_steps, default=100,
                        help="integrated-gradients steps (IG, XRAI; default: %(default)s); 'auto' (with --scorecard): "
                             "the fewest whose completeness gap is below 1 %%")
    parser.add_argument("--subset", type=int, default=4,
                        help="scorecard: images for randomisation and stability (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors answer before TensorFlow loads
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    if args.scorecard:
        return scorecard_main(args, argv)
    if args.ig_steps == "auto":
        print("error: --ig-steps auto is chosen per run by the scorecard: use it with --scorecard", file=sys.stderr)
        return 2
    from bnp_cxr.attribution.methods import METHODS, MethodConfig
    from bnp_cxr.attribution.run import AttributionConfig, attribute, find_runs, merge, run_info

    try:
        if args.merge:
            summary = merge(args.out)
        else:
            config = AttributionConfig(
                methods=tuple(args.methods or METHODS), target=args.target, n_images=args.n, split=args.split,
                seed=args.seed,
                top_fraction=args.top_fraction, n_boot=args.n_boot, shard=args.shard or (0, 1),
                panels=not args.no_panels, lung_model=str(args.lung_model) if args.lung_model else None,
                method=MethodConfig(smoothgrad=args.smoothgrad, conv_layer=args.conv_layer, xrai_impl=args.xrai,
                                    batch_size=args.batch_size, seed=args.seed, ig_steps=args.ig_steps))
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
    if "per_image" in summary:  # a complete sample (not one shard): each evaluated run's report gets its section
        from bnp_cxr.evaluation.report import command_line
        from bnp_cxr.evaluation.report_attribution import add_attribution_to_reports

        for report in add_attribution_to_reports(args.run or find_runs(args.runs), args.out, SANITY_DIR,
                                                 command_line("attribute", argv)):
            print(f"report: {report}")
    return 0


def scorecard_main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """tools/attribute.py --scorecard: score the sample with every run and method."""
    from bnp_cxr.attribution.methods import ALL_METHODS, MethodConfig
    from bnp_cxr.attribution.run import AttributionConfig, find_runs, run_info
    from bnp_cxr.attribution.scorecard import ScorecardConfig
    from bnp_cxr.attribution.scorecard_run import write_scorecard

    try:
        config = ScorecardConfig(
            methods=tuple(args.methods or ALL_METHODS), target=args.target, top_fraction=args.top_fraction,
            subset=args.subset, n_boot=args.n_boot, seed=args.seed, ig_steps_auto=args.ig_steps == "auto",
            method=MethodConfig(conv_layer=args.conv_layer, xrai_impl=args.xrai, batch_size=args.batch_size,
                                seed=args.seed, ig_steps=100 if args.ig_steps == "auto" else args.ig_steps))
        lung_model = None
        if args.lung_model:
            from bnp_cxr.lungs import load_lung_model

            lung_model = load_lung_model(str(args.lung_model))
        runs = [run_info(path, args.records) for path in (args.run or find_runs(args.runs))]
        written = write_scorecard(runs, args.out, config, lung_model=lung_model,
                                  sample=AttributionConfig(n_images=args.n, split=args.split, seed=args.seed))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for row in written.get("ig_steps", []):
        print(f"--ig-steps auto at {row['size']} px: {row['ig_steps']} steps (completeness gap "
              f"{row['completeness_gap']:.2%})")
    for row in written["not_applicable"]:
        print(f"not applicable at {row['size']} px: {row['method']} ({row['reason']})")
    print(f"scorecard of {written['images']} image(s): {written['table']}, {written['figure']}")
    from bnp_cxr.evaluation.report import command_line
    from bnp_cxr.evaluation.report_attribution import add_scorecard_to_reports

    for report in add_scorecard_to_reports([run.path for run in runs], args.out, command_line("attribute", argv)):
        print(f"report: {report}")
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
