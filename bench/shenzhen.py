"""Does the unchanged pipeline learn from real radiographs? Shenzhen TB set with stand-in labs.

Shenzhen manifest (bnp_cxr.data.sources.shenzhen: tb=1 -> BNPP 2000 / BNP 500 pg/mL, tb=0 -> 100 / 30; a pipeline
check, not a BNP model) -> records (write_records) -> train (bnp_cxr.training.train, small_cnn, from
scratch unless --pretrain simclr) -> evaluate_run on the test split. Reports test AUC (BNPP > 400,
combined) with patient-bootstrap 95% CIs per seed. The data stay in ../shared/data; work/shenzhen holds a symlink,
records and runs (never commit them: they derive from the images).

    python bench/shenzhen.py                              # 256 px, 30 epochs, seed 0
    python bench/shenzhen.py --size 128 --epochs 10 --seeds 0 1 2
    python bench/shenzhen.py --size 256 --epochs 10 --seeds 0 1 2 --site-augment --pretrain simclr \
        --pretrain-epochs 20 --pretrain-extra work/nih/records256/whole  # + the NIH images (bench/nih_whole_run.py's)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402

from bnp_cxr.workspace import WORK_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lungs" / "shenzhen"
METRICS = ("auc_bnpp_gt_400", "auc_combined", "pearson_r_log10_bnpp", "mae_log10_bnpp")


def ensure_records(data_dir: Path, work_dir: Path, size: int, workers: int) -> Path:
    """Manifest (symlinked data) and records at `size` under work_dir; complete records are reused."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.data.sources.shenzhen import write_shenzhen_manifest
    from bnp_cxr.records.writer import IngestConfig, write_records

    manifest = load_manifest(write_shenzhen_manifest(data_dir, work_dir / "input").manifest)
    records = work_dir / f"records{size}"
    write_records(manifest, records, IngestConfig(sizes=(size,), workers=workers, resume=True, progress=False))
    return records


def run_seed(records: Path, run_dir: Path, size: int, epochs: int, seed: int, batch_size: int,
             n_boot: int, site_augment: bool = False, members: int = 1, pretrain: str = "none",
             pretrain_epochs: int | None = None, pretrain_extra: tuple[str, ...] = ()) -> dict:
    """Train one run (from scratch unless pretrain names a method) and evaluate it on the test split; one result
    row."""
    from bnp_cxr.evaluation.evaluate import evaluate_run
    from bnp_cxr.training import make_config, train

    if run_dir.exists():  # a benchmark run always starts from scratch
        shutil.rmtree(run_dir)
    config = make_config({"records_dir": str(records), "size": size, "backbone": "small_cnn", "members": members,
                          "epochs": epochs, "seed": seed, "batch_size": batch_size, "run_dir": str(run_dir),
                          "site_augment": site_augment, "pretrain": pretrain,
                          **({"pretrain_epochs": pretrain_epochs} if pretrain_epochs else {}),
                          **({"pretrain_extra": tuple(pretrain_extra)} if pretrain_extra else {})})
    started = time.perf_counter()
    result = train(config, verbose=0, log=lambda _: None)
    train_s = time.perf_counter() - started
    evaluation = evaluate_run(run_dir, records, split="test", n_boot=n_boot)
    row = {"size_px": size, "model_px": result.config.model_px, "epochs": epochs, "seed": seed,
           "site_augment": site_augment, "members": members, "pretrain": result.config.pretrain,
           "pretrain_epochs": result.config.pretrain_epochs if result.config.pretrain != "none" else None,
           "pretrain_extra_images": pretraining_extra(run_dir),
           "train_s": round(train_s, 1),
           "best_val_loss": result.best_val_loss, "n_test": evaluation["n_images"]}
    for name in METRICS:
        entry = evaluation["metrics"][name]
        row[name] = entry["estimate"]
        row[f"{name}_ci"] = [entry["ci_low"], entry["ci_high"]]
    return row


def pretraining_extra(run_dir: Path) -> int:
    """Images the run's pretraining took from --pretrain-extra folders (its encoder.json; 0 without)."""
    from bnp_cxr.workspace import RunDir

    record = RunDir(run_dir).encoder_key
    return sum(count["images"] for count in json.loads(record.read_text()).get("extra", [])) if record.is_file() else 0


def shenzhen_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every Shenzhen benchmark takes: data, work folder, training, bootstrap, result name."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Shenzhen folder (index.csv, images/, masks/)")
    parser.add_argument("--work", type=Path, default=REPO / WORK_DIR / "shenzhen", help="manifest, records and runs")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--name", default=name, help="result file bench/results/NAME.json")
    return parser


def parse_with_data(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments; exits with a message when --data holds no Shenzhen index."""
    args = parser.parse_args()
    if not (args.data / "index.csv").is_file():
        sys.exit(f"error: no Shenzhen data at {args.data} (index.csv missing); pass --data")
    return args


def main() -> None:
    parser = shenzhen_parser(__doc__, "shenzhen")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--site-augment", action=argparse.BooleanOptionalAction, default=False,
                        help="train with the other-site augmentation (default: off, the CI test's setting)")
    parser.add_argument("--members", type=int, default=1, help="models per run, averaged (default: 1)")
    parser.add_argument("--pretrain", choices=("none", "simclr"), default="none",
                        help="self-supervised pretraining first (default: none, as the benches before it; train.py "
                             "on a CPU: simclr)")
    parser.add_argument("--pretrain-epochs", type=int, help="its epochs (default: train.py's)")
    parser.add_argument("--pretrain-extra", nargs="+", default=[], metavar="RECORDS_DIR",
                        help="records folders of other radiographs (at --size) that join the pretraining, e.g. "
                             "work/nih/records256/fold0: every NIH image, from other sites")
    args = parse_with_data(parser)

    records = ensure_records(args.data, args.work, args.size, args.workers)
    parts = [("_site", args.site_augment), (f"_members{args.members}", args.members > 1),
             (f"_{args.pretrain}{args.pretrain_epochs or ''}", args.pretrain != "none"),
             ("_extra", bool(args.pretrain_extra))]
    suffix = "".join(part for part, wanted in parts if wanted)
    rows = [run_seed(records, args.work / "runs" / f"size{args.size}_e{args.epochs}_seed{seed}{suffix}", args.size,
                     args.epochs, seed, args.batch_size, args.n_boot, args.site_augment, args.members,
                     args.pretrain, args.pretrain_epochs, tuple(args.pretrain_extra))
            for seed in args.seeds]
    for row in rows:  # the table shows "estimate [low, high]"
        for name in METRICS:
            low, high = row[f"{name}_ci"]
            row[f"{name}_text"] = f"{row[name]:.3f} [{low:.3f}, {high:.3f}]"
    report(args.name, {"data": "Shenzhen TB (566 CXR), stand-in labs: tb=1 -> BNPP 2000 / BNP 500 pg/mL, "
                               "tb=0 -> 100 / 30 pg/mL; a pipeline check, not a BNP model",
                       "backbone": "small_cnn", "augment": True, "batch_size": args.batch_size,
                       "min_auc_bnpp": min(row["auc_bnpp_gt_400"] for row in rows),
                       "min_auc_bnpp_ci_low": min(row["auc_bnpp_gt_400_ci"][0] for row in rows)},
           rows, ["size_px", "model_px", "epochs", "seed", "site_augment", "members", "pretrain", "pretrain_epochs",
                  "pretrain_extra_images", "train_s", "n_test",
                  "auc_bnpp_gt_400_text", "auc_combined_text", "pearson_r_log10_bnpp_text"])


if __name__ == "__main__":
    main()
