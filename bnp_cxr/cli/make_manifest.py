"""Write the standard manifest.csv (data_manifests/README.md) of a public chest-radiograph dataset.

The dataset is linked, not copied; rows that cannot be used (missing image, unknown finding, a view
that is not frontal, ...) go to rejects.csv beside the manifest with the reason, and the rest go on.
NIH, Shenzhen and Montgomery labels become documented stand-in labs (a pipeline check, never a BNP model) and finding
columns; MIMIC-CXR + MIMIC-IV gives real NT-proBNP / BNP labs (labs.csv) and a flow report (docs/mimic.md).

    python tools/make_manifest.py nih ../shared/data/nih --out work/nih
    python tools/make_manifest.py nih /data/cxr14 --labels /data/cxr14/Data_Entry_2017_v2020.csv --out work/nih
    python tools/make_manifest.py shenzhen ../shared/data/lungs/shenzhen --out work/shenzhen
    python tools/make_manifest.py montgomery /data/MontgomerySet --out work/montgomery   # NLM's release
    python tools/make_manifest.py mimic --cxr /data/mimic-cxr-jpg/2.1.0 --iv /data/mimiciv/3.1 --out work/mimic
    python tools/make_tfrecords.py --manifest work/nih/manifest.csv --out work/nih/records --sizes 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnp_cxr.workspace import SPLITS

LAB_TESTS = ("BNP", "BNPP")


def item_override(text: str) -> tuple[str, int]:
    """'BNPP=50963' -> ('BNPP', 50963); NT-proBNP / NTproBNP are accepted for BNPP."""
    test, _, itemid = text.partition("=")
    test = test.strip().upper().replace("-", "").replace("NTPROBNP", "BNPP")
    if test not in LAB_TESTS or not itemid.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--itemid {text!r}: expected TEST=ITEMID with TEST in {LAB_TESTS}")
    return test, int(itemid)


def _public_options(args: argparse.Namespace) -> tuple[Path, dict]:
    options: dict = {"with_bnp": not args.bnpp_only, "split": args.split}
    if args.source == "nih":
        options["labels"] = args.labels
    else:
        options["with_masks"] = not args.no_masks
    return args.dataset, options


def _mimic_options(args: argparse.Namespace) -> tuple[Path, dict]:
    itemids: dict[str, list[int]] = {}
    for test, itemid in args.itemid or ():
        itemids.setdefault(test, []).append(itemid)
    return args.cxr, {"iv_dir": args.iv, "official_split": args.official_split, "itemids": itemids or None,
                      "images": args.images, "window_hours": args.window_hours, "progress": not args.no_progress}


def _add_mimic(sources) -> None:
    mimic = sources.add_parser("mimic", help="MIMIC-CXR(-JPG) radiographs + MIMIC-IV NT-proBNP / BNP labs "
                                             "(credentialed; docs/mimic.md)")
    mimic.add_argument("--cxr", type=Path, required=True,
                       help="MIMIC-CXR-JPG folder (files/, mimic-cxr-2.0.0-*.csv.gz) or the DICOM release "
                            "(files/, cxr-record-list.csv.gz)")
    mimic.add_argument("--iv", type=Path, required=True, help="MIMIC-IV folder (hosp/labevents.csv.gz, "
                                                              "hosp/d_labitems.csv.gz)")
    mimic.add_argument("--out", type=Path, required=True, help="manifest folder (holds a link to --cxr)")
    mimic.add_argument("--official-split", action="store_true",
                       help="the official train/validate/test split (default: the project's patient-level split)")
    mimic.add_argument("--itemid", type=item_override, nargs="+", metavar="TEST=ITEMID",
                       help="lab items instead of the d_labitems label search, e.g. BNPP=50963")
    mimic.add_argument("--images", choices=("auto", "jpg", "dicom"), default="auto",
                       help="image release (default: dicom when cxr-record-list.csv.gz is there, else jpg)")
    mimic.add_argument("--window-hours", type=float, default=24.0,
                       help="keep images with a lab within +-H hours; give make_tfrecords the same (default: "
                            "%(default)s)")
    mimic.add_argument("--no-progress", action="store_true", help="no progress bars")
    mimic.set_defaults(options=_mimic_options, report=_mimic_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    nih = sources.add_parser("nih", help="NIH ChestX-ray14 (release or the labels.csv subset)")
    nih.add_argument("--labels", type=Path, help="label file (default: labels.csv, else Data_Entry_2017*.csv)")
    tb_sets = [sources.add_parser(name, help=f"{title} TB set (index.csv, images/[, masks/]; or NLM's release, "
                                             "CXR_png/<id>_<tb>.png)")
               for name, title in (("shenzhen", "Shenzhen"), ("montgomery", "Montgomery County"))]
    for tb_set in tb_sets:
        tb_set.add_argument("--no-masks", action="store_true", help="leave lung_mask_path empty")
    for source in (nih, *tb_sets):
        source.add_argument("dataset", type=Path, help="the dataset's folder")
        source.add_argument("--out", type=Path, required=True, help="manifest folder (holds a link to the dataset)")
        source.add_argument("--bnpp-only", action="store_true", help="stand-in BNPP only (BNP left empty)")
        source.add_argument("--split", choices=SPLITS,
                            help="put every row in this split (e.g. test: another site's films for a model trained "
                                 "elsewhere; default: the records' hashed patient split)")
        source.set_defaults(options=_public_options, report=_public_report)
    _add_mimic(sources)
    return parser


def _public_report(result) -> str:
    return (f"{result.manifest}: {result.n_rows} rows with finding columns {', '.join(result.findings)}; "
            f"{result.n_rejected} rejected ({result.rejects})")


def _mimic_report(result) -> str:
    from bnp_cxr.data.sources.mimic.flow import format_flow

    return (f"{format_flow(result.flow)}\n{result.manifest}: {result.n_rows} rows, labs in {result.labs}; "
            f"{result.n_rejected} rejected ({result.rejects}); flow in {result.flow_json} and {result.flow_png}\n"
            f"next: set BNP_CXR_SALT, then python tools/make_tfrecords.py --manifest {result.manifest} "
            f"--labs {result.labs} --out {result.manifest.parent / 'records'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bnp_cxr.data.sources import SOURCES

    dataset, options = args.options(args)
    try:
        result = SOURCES[args.source](dataset, args.out, **options)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(args.report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
