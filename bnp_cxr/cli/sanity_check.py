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
import sys
from pathlib import Path

from bnp_cxr.console import quiet_tensorflow
from bnp_cxr.workspace import RUNS_DIR, SANITY_DIR, SPLITS, RunDir


def build_parser() -> argparse.ArgumentParser:
    from bnp_cxr.attribution.names import METHODS, TARGETS, XRAI_IMPLS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", dest="runs",
                        help=f"run folder with {RunDir.MODEL} and {RunDir.CONFIG}; repeatable "
                             "(default: every trained run in --runs-root)")
    parser.add_argument("--runs-root", type=Path, default=RUNS_DIR, help="(default: %(default)s)")
    parser.add_argument("--records", type=Path, help="records folder (default: the run config's records_dir)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="(default: %(default)s)")
    parser.add_argument("--n", type=int, default=8, help="images: the first N of the split (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="(default: all three)")
    parser.add_argument("--target", choices=tuple(TARGETS), default="bnpp",
                        help="output explained (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, help="randomise at most this many layer groups (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="re-initialisation seed (default: %(default)s)")
    parser.add_argument("--smoothgrad", action="store_true", help="vanilla gradients with SmoothGrad")
    parser.add_argument("--xrai-impl", choices=XRAI_IMPLS, default="fast", help="(default: %(default)s)")
    parser.add_argument("--ig-steps", type=int, default=100, help="XRAI's IG steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images / IG steps per model call "
                                                                   "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=SANITY_DIR, help="(default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors answer before TensorFlow loads
    quiet_tensorflow()  # TensorFlow's start-up lines stay out of the output (BNP_CXR_TF_LOGS=1 shows them)
    if args.n < 1:
        print(f"error: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    import pandas as pd

    from bnp_cxr.attribution.methods import MethodConfig
    from bnp_cxr.attribution.run import find_runs
    from bnp_cxr.attribution.sanity import SANITY_CSV, SANITY_PLOT, check_run
    from bnp_cxr.evaluation.report import command_line
    from bnp_cxr.evaluation.report_attribution import add_sanity_to_report

    try:
        runs = args.runs or find_runs(args.runs_root)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no run folder with a trained model in {args.runs_root}; pass --run", file=sys.stderr)
        return 2
    config = MethodConfig(smoothgrad=args.smoothgrad, xrai_impl=args.xrai_impl, ig_steps=args.ig_steps,
                          batch_size=args.batch_size, seed=args.seed)
    for run in runs:
        try:
            frame, out, title = check_run(run, args.out, tuple(args.methods), records_dir=args.records,
                                          split=args.split, n_images=args.n, target=args.target, config=config,
                                          max_steps=args.max_steps, seed=args.seed)
        except (FileNotFoundError, ValueError, KeyError) as error:
            print(f"error: {run}: {error}", file=sys.stderr)
            return 2
        with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 40):
            print(f"{title}\n{frame.to_string(index=False, float_format=lambda value: f'{value:.3f}')}")
        print(f"wrote {out / SANITY_CSV} and {out / SANITY_PLOT}")
        report = add_sanity_to_report(run, out, command_line("sanity_check", argv))
        print(f"report: {report}\n" if report else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
