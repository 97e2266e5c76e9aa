"""The command-line options of a training run, shared by bnp-cxr-train and bnp-cxr-resolution-study."""

from __future__ import annotations

import argparse
import dataclasses

from bnp_cxr.records.standardize import STANDARDIZATIONS
from bnp_cxr.training.config import (CPU_MEMBERS, CPU_MODEL_PX, CPU_PRETRAIN, CPU_STANDARDIZE, KEEP, LOSS_NAMES,
                                    MIXED_PRECISION, OPTIMIZERS, PRESETS, PRETRAIN_METHODS, PRETRAIN_VIEW_RESOLUTIONS,
                                    SCHEDULES, TrainConfig)
from bnp_cxr.workspace import BACKBONE_NAMES, RECORDS_DIR, RUNS_DIR, SMALL_CNN_WIDTHS


def add_training_arguments(parser: argparse.ArgumentParser, *, per_run: bool = True, title: str | None = None) -> None:
    """Add the training options (to a group `title` if given); per_run adds --size, --run-dir, --resume, --evaluate."""
    d = TrainConfig()
    options = parser.add_argument_group(title) if title else parser
    options.add_argument("--config", dest="preset", choices=sorted(PRESETS),
                         help="a preset; 'paper': resnet152, imagenet, L1 on log10 labels, Adam, the records' split")
    options.add_argument("--records", dest="records_dir", help=f"records folder (default: {RECORDS_DIR})")
    if per_run:
        options.add_argument("--size", type=int, help=f"image size in px; records must exist at it (default: {d.size})")
    options.add_argument("--backbone", choices=sorted(BACKBONE_NAMES),
                         help="default: small_cnn without a GPU, resnet152 with one")
    options.add_argument("--weights", help="imagenet, none, or a .weights.h5 / .keras file (default: none)")
    options.add_argument("--epochs", type=int, help=f"default: {d.epochs}")
    options.add_argument("--batch-size", type=int,
                         help=f"global batch size, split across GPUs and workers (default: {d.batch_size})")
    options.add_argument("--optimizer", choices=OPTIMIZERS,
                         help=f"Keras optimizer, Keras's defaults but the options below (default: {d.optimizer})")
    options.add_argument("--lr", type=float, help=f"learning rate (default: {d.lr:g}; paper preset 1e-4)")
    options.add_argument("--weight-decay", type=float, help="decoupled weight decay of adamw / sgd (default: 0)")
    options.add_argument("--momentum", type=float, help="sgd momentum (default: 0)")
    options.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default: {d.schedule})")
    options.add_argument("--warmup-epochs", type=float, help="linear warm-up from 0 over this many epochs (default: 0)")
    options.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                         help="on = float16 compute with loss scaling, bfloat16 = bfloat16 compute; float32 "
                              "variables and outputs either way (default auto: on when a GPU is visible)")
    options.add_argument("--xla", action=argparse.BooleanOptionalAction,
                         help="compile the train / eval steps with XLA (default: off)")
    options.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction,
                         help="BatchNorm statistics of the global batch, all-reduced across GPUs and workers "
                              "(default: off, per replica)")
    options.add_argument("--seed", type=int, help=f"default: {d.seed}")
    if per_run:
        options.add_argument("--run-dir", help=f"run folder (default: {RUNS_DIR / 'size{SIZE}'})")
        options.add_argument("--resume", action="store_true", default=False,
                             help="continue the run in --run-dir from its last completed epoch")
    _add_recipe_arguments(options, d)
    options.add_argument("--cache", action=argparse.BooleanOptionalAction,
                         help="cache records in memory (default: off)")
    if per_run:
        options.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                             help="evaluate the best model on the test split when training ends (default: on)")
    options.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for that evaluation")
    options.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                         help="0 silent, 1 progress bar, 2 one line per epoch (default: 1)")


def _add_recipe_arguments(options, d: TrainConfig) -> None:
    """What the model learns from and how: augmentation, standardisation, loss, kept epoch, ensemble."""
    options.add_argument("--augment", action=argparse.BooleanOptionalAction, help="training augmentation (default: on)")
    options.add_argument("--site-augment", action=argparse.BooleanOptionalAction,
                         help="also render training images as another site might: exposure, grey range, blur, "
                              "resolution, noise (before standardisation), wider scale and aspect changes "
                              "(default: on with the CPU backbone, off otherwise)")
    options.add_argument("--standardize", choices=STANDARDIZATIONS,
                         help="per-image intensity standardisation of the model input inside the content box "
                              f"(default: {CPU_STANDARDIZE} with the CPU backbone, none otherwise)")
    options.add_argument("--loss", choices=LOSS_NAMES,
                         help="l1 (the paper's), l2 (squared error) or l1_balanced (L1 with each output's positives "
                              "and negatives weighing half each in a batch) on the log10 labels "
                              f"(default: {d.loss})")
    options.add_argument("--loss-weights", type=float, nargs=2, metavar=("BNP", "BNPP"),
                         help="weights of the two outputs in the loss (default: 1 1)")
    options.add_argument("--finding-loss-weight", type=float, metavar="W",
                         help="train auxiliary heads on the finding columns the records carry (one logit each, masked "
                              "binary cross-entropy times W added to the loss); model.keras keeps the two lab "
                              f"outputs (default: {d.finding_loss_weight:g}, off)")
    options.add_argument("--mixup", type=float, metavar="ALPHA",
                         help="mixup: train on Beta(ALPHA, ALPHA) blends of two images and of their log10 labs "
                              f"(Zhang et al. 2018; default: {d.mixup:g}, off)")
    options.add_argument("--rank-loss-weight", type=float, metavar="W",
                         help="add W times a pairwise ranking loss (positives above negatives at each output's "
                              f"positivity threshold, RankNet's logistic) to the lab loss (default: "
                              f"{d.rank_loss_weight:g}, off)")
    options.add_argument("--keep", choices=KEEP,
                         help="which epoch model.keras holds: the last or the one with the lowest val loss (the "
                              f"paper preset's); default: {d.keep}")
    options.add_argument("--train-on-val", action=argparse.BooleanOptionalAction,
                         help="fit on the val images too (with --keep last, where val picks nothing): more labels, "
                              "but the val scores become in-sample; the test split stays held out (default: off)")
    options.add_argument("--dropout", type=float, help=f"dropout before the output layer (default: {d.dropout})")
    options.add_argument("--members", type=int, metavar="N",
                         help="train N models (seeds seed..seed+N-1) and save their mean as model.keras (default: "
                              f"{CPU_MEMBERS} with the CPU backbone, else 1)")
    options.add_argument("--model-px", type=int, metavar="PX",
                         help="the resolution the model reads: larger images are area-averaged down to it inside "
                              "the model (a whole factor; heatmaps stay at --size); at or above --size, the full "
                              f"size (default: {CPU_MODEL_PX} with the CPU backbone, the full size otherwise)")
    options.add_argument("--widths", type=int, nargs="+", metavar="C",
                         help=f"channels of the small CNN's conv blocks, one per block (default: "
                              f"{' '.join(map(str, SMALL_CNN_WIDTHS))})")
    _add_pretrain_arguments(options, d)


def _add_pretrain_arguments(options, d: TrainConfig) -> None:
    """The self-supervised pretraining's options (training.pretrain)."""
    options.add_argument("--pretrain", choices=PRETRAIN_METHODS,
                         help="self-supervised pretraining of the backbone on the train and val images (no labels) "
                              "before training; simclr: contrastive views, saved as pretrain/encoder.keras in the run "
                              f"folder and reused on --resume (default: {CPU_PRETRAIN} with the CPU backbone and no "
                              "--weights, none otherwise)")
    options.add_argument("--pretrain-epochs", type=int, metavar="N",
                         help="passes of the pretraining over the train and val images and any --pretrain-extra "
                              f"(default: {d.pretrain_epochs})")
    options.add_argument("--pretrain-min-crop", type=float, metavar="FRACTION",
                         help="the smallest share of an image's area a pretraining view crops (default: "
                              f"{d.pretrain_min_crop})")
    options.add_argument("--pretrain-temperature", type=float, metavar="T",
                         help="the contrastive loss's (NT-Xent) temperature: lower weighs the hardest negatives of a "
                              f"batch more (default: {d.pretrain_temperature})")
    options.add_argument("--pretrain-view-res", choices=PRETRAIN_VIEW_RESOLUTIONS,
                         help="the pretraining views' resolution: input = --size px, area-averaged to --model-px "
                              "inside the model as the training images are; model = cropped from the --size images "
                              "and resized straight to --model-px, where the backbone reads them (a cheaper step; "
                              f"the same with --model-px at --size) (default: {d.pretrain_view_res})")
    options.add_argument("--pretrain-extra", nargs="+", metavar="RECORDS_DIR",
                         help="records folders (tools/make_tfrecords.py at --size) of other radiographs whose images, "
                              "every split and without their labels, join the pretraining: e.g. an archive's films "
                              "without lab results; images of this run's test patients are left out (default: none)")


def training_options(args: argparse.Namespace) -> dict:
    """The TrainConfig options the user gave explicitly (argparse leaves the others None); preset and resume aside."""
    names = {field.name for field in dataclasses.fields(TrainConfig)} - {"preset", "resume"}
    options = {key: value for key, value in vars(args).items() if key in names and value is not None}
    if "weights" in options and options["weights"].lower() == "none":
        options["weights"] = None
    for name in ("loss_weights", "widths", "pretrain_extra"):
        if name in options:
            options[name] = tuple(options[name])
    return options
