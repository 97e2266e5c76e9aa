"""Generate the phantom cohort (synthetic chest radiograph DICOMs with known truth) and its contact sheet.

    python tools/make_phantom.py                      # default cohort into work/cohort
    python tools/make_phantom.py --small --out /tmp/c # 24 small images for a quick look
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from bnp_cxr.workspace import COHORT_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=COHORT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--n-images", type=int, help="images (default: 360; --small: 24)")
    parser.add_argument("--n-patients", type=int, help="patients (default: 300; --small: 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="render processes (default: all cores, %(default)s)")
    parser.add_argument("--small", action="store_true", help="the small test cohort (256 x 224 px)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bnp_cxr.phantom import CohortConfig, generate_cohort

    config = CohortConfig.small(seed=args.seed) if args.small else CohortConfig(seed=args.seed)
    overrides = {key: value for key, value in (("n_images", args.n_images), ("n_patients", args.n_patients))
                 if value is not None}
    if "n_patients" in overrides and "n_images" not in overrides:
        overrides["n_images"] = max(overrides["n_patients"], min(config.n_images, 2 * overrides["n_patients"]))
    if "n_images" in overrides and "n_patients" not in overrides:
        overrides["n_patients"] = min(overrides["n_images"], max(config.n_patients, (overrides["n_images"] + 1) // 2))
    config = replace(config, **overrides)
    summary = generate_cohort(args.out, config, workers=args.workers, progress=not args.no_progress)
    counts = summary["counts"]
    print(f"Phantom cohort in {args.out}: {counts['images']} images of {counts['patients']} patients, "
          f"{summary['disk_megabytes']} MB; label-noise ceiling r = "
          f"{summary['label_noise_ceiling']['simulated']['pearson_r_log10_bnpp']:.3f}")
    print(f"Contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
