"""Shared names: the default work folders, run-folder file names, splits, image sizes and lab thresholds.

Every stage takes its defaults from here, so a folder or file name is spelled once. Paths are
relative to the current directory, as the documented commands are run from the project root.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

WORK_DIR = Path("work")
COHORT_DIR = WORK_DIR / "cohort"  # phantom cohort: DICOMs, manifest.csv, labs.csv
RECORDS_DIR = WORK_DIR / "records"  # TFRecords per size, summary.json, rejects.csv
RUNS_DIR = WORK_DIR / "runs"  # one RunDir per trained model: size{N}/
ATTRIBUTION_DIR = WORK_DIR / "attribution"
SANITY_DIR = WORK_DIR / "sanity"
STUDY_DIR = WORK_DIR / "study"
LUNGS_DIR = WORK_DIR / "lungs"
PREDICTIONS_DIR = WORK_DIR / "predictions"

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # the hashed patient split of rows without a split column (paper: 80/10/10)
# bnp_cxr.models.BACKBONES builds them; named here so that option parsing and configs need no Keras.
BACKBONE_NAMES = ("resnet152", "resnet50", "densenet121", "efficientnetv2s", "small_cnn")
SMALL_CNN_WIDTHS = (24, 48, 96, 160)  # channels of small_cnn's conv blocks unless a run sets its own (--widths)
PAPER_SIZES = (64, 128, 256, 512, 1024)  # px, Huynh et al.
DEFAULT_SIZES = (64, 128, 256)  # px, what a CPU demo writes


def model_reads_px(size: int, model_px: int | None) -> int:
    """The resolution (px) a model reads from `size` px images: model_px, at most size (None: size); a divisor of it."""
    if model_px is None or model_px >= size:
        return size
    if model_px < 1 or size % model_px:
        raise ValueError(f"model_px must divide the image size: {size} px is not a whole multiple of {model_px} px")
    return model_px

# Positive for heart failure / cardiogenic oedema (Huynh et al., MIDL 2022): BNPP > 400 or BNP > 100 pg/mL.
BNPP_THRESHOLD_PG_ML = 400.0
BNP_THRESHOLD_PG_ML = 100.0

LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})  # DICOM ViewPosition values that are not frontal

# Optional binary finding columns of a manifest (1 / 0 / empty), carried into the records and predictions.csv:
# the radiological findings of ChestX-ray14 (Wang et al., CVPR 2017) and CheXpert / MIMIC-CXR (Irvin et al.,
# AAAI 2019), in snake case, plus "tb" (Shenzhen). evaluate.py scores predicted log10 BNPP against each one.
FINDINGS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "effusion", "emphysema",
            "enlarged_cardiomediastinum", "fibrosis", "fracture", "hernia", "infiltration", "lung_lesion",
            "lung_opacity", "mass", "nodule", "pleural_other", "pleural_thickening", "pneumonia", "pneumothorax",
            "support_devices", "tb", "no_finding")
# The radiographic signs of heart failure that travel with a raised BNP / NT-proBNP (stand-in labels of the
# public sources: bnp_cxr.data.sources).
HEART_FAILURE_FINDINGS = ("cardiomegaly", "edema", "effusion")

# Phantom signal components: bit flags in each record's component map (truth for in-lung scores).
COMPONENT_BITS = {"lung_opacity": 1, "kerley_lines": 2, "heart": 4, "effusion": 8, "confounder": 16}


def _member(name: str) -> property:
    """A read-only path property: the run folder / name."""
    return property(lambda self: self.path / name, doc=f"run folder / {name}")


@dataclass(frozen=True)
class RunDir:
    """The files of one training run's folder (written by training, read by evaluation and attribution)."""

    path: Path

    MODEL = "model.keras"  # the last epoch, or the lowest val loss (TrainConfig.keep)
    CONFIG = "config.json"  # resolved options, versions, data fingerprint, sessions
    HISTORY = "history.csv"  # one row per epoch
    METRICS = "metrics.json"  # test-split metrics with CIs
    PREDICTIONS = "predictions.csv"  # one row per test image
    LOGS = "logs"  # TensorBoard
    BACKUP = "backup"  # BackupAndRestore state for --resume
    MEMBERS = "members"  # an ensemble's member runs, members/member{k}/, each a run folder of this layout
    PRETRAIN = "pretrain"  # the self-supervised encoder the run starts from (training.pretrain), and its key
    ENCODER = "encoder.keras"
    ENCODER_KEY = "encoder.json"

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def for_size(cls, size: int, runs_dir: str | os.PathLike = RUNS_DIR) -> "RunDir":
        """The default run folder of a size: work/runs/size{size}."""
        return cls(Path(runs_dir) / f"size{int(size)}")

    model = _member(MODEL)
    config = _member(CONFIG)
    history = _member(HISTORY)
    metrics = _member(METRICS)
    predictions = _member(PREDICTIONS)
    logs = _member(LOGS)
    encoder = _member(f"{PRETRAIN}/{ENCODER}")
    encoder_key = _member(f"{PRETRAIN}/{ENCODER_KEY}")  # the key it was made under and its final loss

    def member(self, index: int) -> "RunDir":
        """The run folder of an ensemble's member `index` (0-based): members/member{index}."""
        return RunDir(self.path / self.MEMBERS / f"member{int(index)}")

    def is_trained(self) -> bool:
        """Whether the folder holds a model and its config (a finished or interrupted run)."""
        return self.model.is_file() and self.config.is_file()


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a run's history.csv (Keras CSVLogger) as floats (epoch as int; NaN where CSVLogger wrote NA: a run
    without val records has no val_ values); [] when absent."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        return [{key: int(value) if key == "epoch" else math.nan if value in ("NA", "") else float(value)
                 for key, value in row.items()} for row in csv.DictReader(handle)]


def parse_sizes(values: list[str]) -> tuple[int, ...]:
    """Sizes in px from the command line, sorted and distinct; 'paper' stands for PAPER_SIZES."""
    import argparse

    sizes: list[int] = []
    for value in values:
        if value == "paper":
            sizes.extend(PAPER_SIZES)
            continue
        try:
            sizes.append(int(value))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--sizes: {value!r} is neither an integer nor 'paper'") from None
    return tuple(sorted(set(sizes)))
