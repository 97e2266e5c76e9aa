"""Write the standard manifest.csv (data_manifests/README.md) of a public chest-radiograph dataset.

The dataset is linked, not copied; rows that cannot be used (missing image, unknown finding, a view
that is not frontal, ...) go to rejects.csv beside the manifest with the reason, and the rest go on.
Labels become documented stand-in labs (a pipeline check, never a BNP model) and finding columns.

    python tools/make_manifest.py nih ../shared/data/nih --out work/nih
    python tools/make_manifest.py nih /data/cxr14 --labels /data/cxr14/Data_Entry_2017_v2020.csv --out work/nih
    python tools/make_manifest.py shenzhen ../shared/data/lungs/shenzhen --out work/shenzhen
    python tools/make_tfrecords.py --manifest work/nih/manifest.csv --out work/nih/records --sizes 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    nih = sources.add_parser("nih", help="NIH ChestX-ray14 (release or the labels.csv subset)")
    nih.add_argument("--labels", type=Path, help="label file (default: labels.csv, else Data_Entry_2017*.csv)")
    shenzhen = sources.add_parser("shenzhen", help="Shenzhen TB set (index.csv, images/, masks/)")
    shenzhen.add_argument("--no-masks", action="store_true", help="leave lung_mask_path empty")
    for source in (nih, shenzhen):
        source.add_argument("dataset", type=Path, help="the dataset's folder")
        source.add_argument("--out", type=Path, required=True, help="manifest folder (holds a link to the dataset)")
        source.add_argument("--bnpp-only", action="store_true", help="stand-in BNPP only (BNP left empty)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bnp_cxr.data.sources import SOURCES

    options = {"with_bnp": not args.bnpp_only}
    if args.source == "nih":
        options["labels"] = args.labels
    else:
        options["with_masks"] = not args.no_masks
    try:
        result = SOURCES[args.source](args.dataset, args.out, **options)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.manifest}: {result.n_rows} rows with finding columns {', '.join(result.findings)}; "
          f"{result.n_rejected} rejected ({result.rejects})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
