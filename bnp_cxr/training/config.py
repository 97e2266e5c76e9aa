"""TrainConfig: every option of a training run, presets, and resolution of the 'auto' choices."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bnp_cxr.records.standardize import STANDARDIZATIONS
from bnp_cxr.training.run_paths import NOT_PATHS, rebased, run_relative
from bnp_cxr.workspace import BACKBONE_NAMES, RECORDS_DIR, RUNS_DIR, SMALL_CNN_WIDTHS, RunDir, model_reads_px

DEFAULT_RECORDS = str(RECORDS_DIR)
DEFAULT_RUNS = str(RUNS_DIR)
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")
MIXED_PRECISION = ("auto", "on", "off", "bfloat16")
KEEP = ("last", "best")  # which epoch's weights model.keras holds
# training.losses.LOSSES: L1 (the paper's), squared error on log10 labels, or L1 with each output's positives and
# negatives weighing half each
LOSS_NAMES = ("l1", "l2", "l1_balanced")
# Keras dtype policies: "on" is float16 compute with dynamic loss scaling (Keras wraps the optimizer in a
# LossScaleOptimizer); bfloat16 has float32's exponent range, so it needs no loss scaling (Ampere+ GPUs, TPUs,
# CPUs with AVX512_BF16 / AMX).
POLICIES = {"on": "mixed_float16", "bfloat16": "mixed_bfloat16", "off": "float32"}
CPU_BACKBONE, GPU_BACKBONE = "small_cnn", "resnet152"
# The CPU recipe's input standardisation: level with none in AUC on NIH folds, smaller drops under simulated
# other-site rendering (bench/nih_recipe.py, bench/site_shift.py).
CPU_STANDARDIZE = "clahe"
# The CPU recipe's ensemble: independently seeded small CNNs averaged into one model (training.ensemble);
# on 5 NIH folds five of them scored 0.021 above their members' mean AUC, above it on every fold
# (bench/nih_recipe.py --recipes default, bench/results/nih_ensemble5.json).
CPU_MEMBERS = 5
# The CPU recipe's other-site augmentation (records.augment.SITE_AUGMENT): on Shenzhen it held AUC under edge
# enhancement and gammas it never draws where the plain augmentation lost up to 0.18, level in-site
# (bench/site_shift.py, bench/results/shenzhen_site_shift128.json); on NIH folds level with the ensemble without it
# (bench/nih_recipe.py --recipes default_site, bench/results/nih_ensemble5_site.json).
CPU_SITE_AUGMENT = True
# The resolution the CPU recipe's small CNN reads: larger records are area-averaged down to it inside the model
# (models.build_model). At 256 px on NIH folds its ensemble scored 0.663 / 0.749 / 0.788 on folds 0-2 against
# 0.692 / 0.737 / 0.727 reading in full, 5-fold mean 0.770, in 11.4 min per fold against ~26.5
# (bench/nih_recipe.py --size 256 --recipes default, bench/results/nih_default_256.json; README).
CPU_MODEL_PX = 128
# Self-supervised pretraining before the CPU recipe's supervised training (training.pretrain): SimCLR on the
# records' own train and val images, no labels. "none": from scratch, or from --weights. On the NIH folds at 256 px
# the ensemble from its encoder scored 0.794 +- 0.049 against 0.770 +- 0.067 from scratch (paired +0.024, members
# higher on every fold), the whole recipe 22 min per fold on 2 cores (bench/nih_recipe.py --size 256 --recipes
# default --name nih_pretrain_256, bench/results/nih_pretrain_256.json; README).
PRETRAIN_METHODS = ("none", "simclr")
CPU_PRETRAIN = "simclr"
# The resolution of the pretraining's views (training.pretrain.contrastive_view): "input" = --size, area-averaged to
# model_px inside the model as every supervised input is; "model" = cropped from the --size images and resized
# straight to model_px, where the backbone reads them, without the model's downsampling (a cheaper step). On the
# NIH folds at 256 px, model views scored 0.785 +- 0.048 against 0.786 +- 0.053 (paired -0.001), their pretraining
# 8.6-8.7 min per fold against 10.2-10.7 (bench/nih_recipe.py --size 256 --recipes views_model_px --name
# nih_views_model_px_256, bench/results/nih_views_model_px_256.json; README).
PRETRAIN_VIEW_RESOLUTIONS = ("input", "model")
# The CPU recipe holds its val images out (TrainConfig.train_on_val off): fitting them too gained nothing measurable
# on NIH (paired +0.005 from 40-epoch encoders, bench/results/nih_train_on_val_256.json; about 0 from the default's
# own 60-epoch ones, bench/results/nih_hold_out_val_paired_256.json; README), and held out they keep the run's val
# scores out of sample: the one sign a run without a test split gives that it learnt.
CONFIG_FILE = RunDir.CONFIG

# Huynh et al. (MIDL 2022): ImageNet ResNet152, L1 on log10 labels, Adam, their patient split (here: the
# records' split). The abstract gives no learning rate; 1e-4 is the usual Adam rate for fine-tuning.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"backbone": "resnet152", "weights": "imagenet", "loss": "l1", "loss_weights": (1.0, 1.0), "lr": 1e-4,
              "schedule": "constant", "keep": "best"},
}
# What a config.json saved before these options existed was trained with (from_json, the run report).
# (model_px: the records' size, and small_cnn's widths: SAVED_BEFORE_WIDTHS, filled in by from_json.)
SAVED_BEFORE_WIDTHS = (24, 48, 96, 160)
SAVED_BEFORE_OPTIONS = {"standardize": "none", "keep": "best", "members": 1, "site_augment": False, "pretrain": "none",
                        "train_on_val": False, "pretrain_view_res": "input"}
PRETRAIN_SETTINGS = ("pretrain_epochs", "pretrain_min_crop", "pretrain_view_res", "pretrain_extra",
                     "pretrain_temperature")
# Options that define what a run learns: a resumed run must keep them (epochs may grow).
IDENTITY_FIELDS = ("records_dir", "size", "backbone", "weights", "batch_size", "optimizer", "lr", "weight_decay",
                   "momentum", "schedule", "warmup_epochs", "mixed_precision", "sync_batchnorm", "seed", "augment",
                   "site_augment", "standardize", "loss", "loss_weights", "dropout", "keep", "members", "model_px",
                   "widths", "pretrain", "pretrain_epochs", "pretrain_min_crop", "pretrain_view_res", "pretrain_extra",
                   "pretrain_temperature", "finding_loss_weight", "mixup", "rank_loss_weight", "train_on_val")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run; None / 'auto' fields are filled in by `resolve`."""

    records_dir: str = DEFAULT_RECORDS
    size: int = 256
    backbone: str | None = None  # None: small_cnn without a GPU, resnet152 with one
    weights: str | None = None  # None (from scratch), "imagenet" or a .weights.h5 / .keras path
    epochs: int = 20
    batch_size: int = 32  # global: split across replicas
    optimizer: str = "adam"  # see OPTIMIZERS and training.optimizers.make_optimizer; Keras's defaults otherwise
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled weight decay of adamw / sgd
    momentum: float = 0.0  # sgd only
    schedule: str = "cosine"  # steadier final epochs than a constant rate on small data
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr, then the schedule
    mixed_precision: str = "auto"  # auto = on (float16) when a GPU is visible; see POLICIES
    xla: bool = False  # jit_compile the train / eval steps with XLA
    sync_batchnorm: bool = False  # BatchNorm moments of the global batch across replicas (models.synchronize_batchnorm)
    seed: int = 0
    run_dir: str | None = None  # None: work/runs/size{size}
    resume: bool = False
    augment: bool = True
    # also render each training image as another site might (records.augment.SITE_AUGMENT): exposure, grey range,
    # blur, resolution, noise before standardisation; wider scale and aspect changes. None: by backbone (resolve)
    site_augment: bool | None = None
    standardize: str | None = None  # model-input standardisation (records.standardize); None: by backbone (resolve)
    loss: str = "l1"  # see LOSS_NAMES
    loss_weights: tuple[float, float] = (1.0, 1.0)  # [BNP, BNPP]
    dropout: float = 0.2
    # auxiliary heads while training (training.findings): one logit per finding column the records carry, their
    # masked binary cross-entropy added to the loss with this weight; 0 = off. model.keras keeps the 2 outputs.
    finding_loss_weight: float = 0.0
    # mixup (training.inputs.mixup_batch): Beta(alpha, alpha) blends of training image pairs and their log10 labs;
    # 0 = off
    mixup: float = 0.0
    # a pairwise ranking term (training.ranking): positives above negatives at each output's threshold; 0 = off
    rank_loss_weight: float = 0.0
    members: int | None = None  # models averaged into model.keras (training.ensemble); None: by backbone (resolve)
    # the resolution the model reads, px: records larger than it are area-averaged down to it inside the model
    # (a whole factor of size); at or above size: the full size. None: by backbone (resolve)
    model_px: int | None = None
    widths: tuple[int, ...] | None = None  # small_cnn's conv block channels; None: workspace.SMALL_CNN_WIDTHS (resolve)
    # self-supervised pretraining of the backbone first (PRETRAIN_METHODS); its encoder becomes `weights`.
    # None: CPU_PRETRAIN for the CPU recipe without --weights, else none (resolve)
    pretrain: str | None = None
    pretrain_epochs: int = 60  # passes over the train and val images and any pretrain_extra (training.pretrain)
    pretrain_min_crop: float = 0.35  # a view is a random crop of at least this fraction of the image's area
    pretrain_view_res: str = "model"  # the views' resolution (PRETRAIN_VIEW_RESOLUTIONS)
    pretrain_temperature: float = 0.2  # NT-Xent's temperature: lower weighs the hardest negatives of a batch more
    # records folders of other radiographs (every split, labels unread) that join the pretraining's own train and
    # val images: an archive's films without lab results; images of this run's test patients are left out
    pretrain_extra: tuple[str, ...] = ()
    # last: the final epoch, where the cosine schedule has annealed the rate to 0; best: the lowest val loss,
    # which on a val split of ~140 images picks an epoch partly by chance (bench/keep_epoch.py).
    keep: str = "last"
    # also fit on the val split's images (keep last only: val then picks nothing); its scores are then in-sample
    train_on_val: bool = False
    cache: bool = False  # keep the serialised records in memory after the first epoch
    shuffle_buffer: int = 1024
    preset: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.size < 32:
            problems.append(f"size must be >= 32 px, got {self.size}")
        if self.backbone is not None and self.backbone not in BACKBONE_NAMES:
            problems.append(f"backbone must be one of {sorted(BACKBONE_NAMES)}, got {self.backbone!r}")
        if min(self.epochs, self.batch_size, self.shuffle_buffer, self.pretrain_epochs) < 1:
            problems.append("epochs, batch_size, shuffle_buffer and pretrain_epochs must be >= 1")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        problems.extend(self._pretrain_problems())
        problems.extend(self._optimizer_problems())
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.keep not in KEEP:
            problems.append(f"keep must be one of {KEEP}, got {self.keep!r}")
        if self.train_on_val and self.keep == "best":
            problems.append("train_on_val fits on the val images, so they cannot pick the best epoch: use keep last")
        if self.loss not in LOSS_NAMES:
            problems.append(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        if len(self.loss_weights) != 2 or min(self.loss_weights) < 0 or not any(self.loss_weights):
            problems.append(f"loss_weights must be two non-negative numbers, not both 0, got {self.loss_weights}")
        if not 0 <= self.finding_loss_weight < float("inf"):
            problems.append(f"finding_loss_weight must be a finite number >= 0, got {self.finding_loss_weight}")
        if not 0 <= self.mixup < float("inf"):
            problems.append(f"mixup must be a finite number >= 0 (the Beta distribution's alpha), got {self.mixup}")
        if self.mixup and self.finding_loss_weight:
            problems.append("mixup blends the log10 labs only: it cannot be combined with finding_loss_weight > 0")
        if not 0 <= self.rank_loss_weight < float("inf"):
            problems.append(f"rank_loss_weight must be a finite number >= 0, got {self.rank_loss_weight}")
        if self.rank_loss_weight and self.finding_loss_weight:
            problems.append("rank_loss_weight and finding_loss_weight cannot be combined (one loss wraps the lab loss)")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.site_augment and not self.augment:
            problems.append("site_augment is part of the training augmentation: it needs augment on")
        if self.members is not None and self.members < 1:
            problems.append(f"members must be >= 1, got {self.members}")
        try:
            model_reads_px(self.size, self.model_px)
        except ValueError as error:
            problems.append(str(error))
        if self.standardize is not None and self.standardize not in STANDARDIZATIONS:
            problems.append(f"standardize must be one of {STANDARDIZATIONS}, got {self.standardize!r}")
        if self.preset is not None and self.preset not in PRESETS:
            problems.append(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.widths is not None and (self.backbone not in (None, CPU_BACKBONE) or not self.widths
                                        or min(self.widths) < 1):
            problems.append(f"widths (channels of {CPU_BACKBONE}'s conv blocks) must be positive and need backbone "
                            f"{CPU_BACKBONE}, got {self.widths} with backbone {self.backbone}")
        if problems:
            raise ValueError("; ".join(problems))

    def _pretrain_problems(self) -> list[str]:
        problems = []
        if self.pretrain is not None and self.pretrain not in PRETRAIN_METHODS:
            problems.append(f"pretrain must be one of {PRETRAIN_METHODS}, got {self.pretrain!r}")
        elif self.pretrain not in (None, "none") and self.weights == "imagenet":
            problems.append(f"pretrain {self.pretrain} makes the starting weights: it cannot start from imagenet")
        if not 0 < self.pretrain_temperature <= 10:
            problems.append(f"pretrain_temperature must be in (0, 10], got {self.pretrain_temperature}")
        if not 0 < self.pretrain_min_crop <= 1:
            problems.append(f"pretrain_min_crop must be in (0, 1], got {self.pretrain_min_crop}")
        if self.pretrain_view_res not in PRETRAIN_VIEW_RESOLUTIONS:
            problems.append(f"pretrain_view_res must be one of {PRETRAIN_VIEW_RESOLUTIONS}, "
                            f"got {self.pretrain_view_res!r}")
        if self.pretrain_extra and self.pretrain == "none":
            problems.append("pretrain_extra adds images to the pretraining: it needs pretrain simclr, not none")
        return problems

    def _optimizer_problems(self) -> list[str]:
        if self.optimizer not in OPTIMIZERS:
            return [f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"]
        problems = []
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        # Keras's Adam with weight decay is AdamW: one name for one optimiser.
        elif self.weight_decay and self.optimizer == "adam":
            problems.append("weight_decay needs optimizer adamw or sgd (Adam with weight decay is adamw)")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        elif self.momentum and self.optimizer != "sgd":
            problems.append(f"momentum is an sgd setting, not one of {self.optimizer}")
        return problems

    @property
    def run_path(self) -> Path:
        """The run folder: run_dir, or work/runs/size{size}."""
        return Path(self.run_dir) if self.run_dir else Path(DEFAULT_RUNS) / f"size{self.size}"

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready values."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """A config from `to_json` output (unknown keys, e.g. versions in config.json, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {key: value for key, value in values.items() if key in names}
        for name in ("loss_weights", "widths", "pretrain_extra"):
            if kept.get(name) is not None:
                kept[name] = tuple(kept[name])
        if "widths" not in kept and kept.get("backbone") in (None, CPU_BACKBONE):  # saved before the option
            kept["widths"] = SAVED_BEFORE_WIDTHS
        if "model_px" not in kept:  # saved before the option: the model read the records' full size
            kept["model_px"] = kept.get("size", cls.size)
        return cls(**{**SAVED_BEFORE_OPTIONS, **kept})


def make_config(options: Mapping[str, Any], *, preset: str | None = None, resume: bool = False) -> TrainConfig:
    """Defaults < preset < options; with resume, the run's saved config.json replaces defaults and preset.

    `options` holds only what the user set explicitly (e.g. CLI flags that were given).
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values: dict[str, Any] = {**(PRESETS[preset] if preset else {}), "preset": preset}
    values.update(options)
    values["resume"] = resume
    config = TrainConfig(**values)
    saved = config.run_path / CONFIG_FILE
    if resume and saved.is_file():
        stored = rebased(TrainConfig.from_json(json.loads(saved.read_text())), config.run_path)
        config = dataclasses.replace(stored, **{**({"preset": preset} if preset else {}),
                                               **(PRESETS[preset] if preset else {}), **options, "resume": True})
    return config


def gpus_visible() -> int:
    """Number of GPUs TensorFlow sees."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def resolve(config: TrainConfig, n_gpus: int, n_workers: int = 1) -> tuple[TrainConfig, list[str]]:
    """Fill in backbone, mixed precision and run_dir; returns the resolved config and why each choice was made."""
    notes = []
    changes: dict[str, Any] = {"records_dir": os.path.abspath(config.records_dir),
                               "run_dir": os.path.abspath(config.run_path)}
    if config.weights not in NOT_PATHS:
        changes["weights"] = os.path.abspath(config.weights)
    if config.backbone is None:
        if n_gpus:
            changes["backbone"] = GPU_BACKBONE
            notes.append(f"No --backbone given and {n_gpus} GPU(s) visible: using {GPU_BACKBONE} "
                         "(the paper's backbone).")
        else:
            changes["backbone"] = CPU_BACKBONE
            # `python bench/train.py --backbone NAME` measures the training images/s of each on this machine.
            notes.append(f"No --backbone given and no GPU visible: using {CPU_BACKBONE} ({GPU_BACKBONE} trains "
                         f"one to two orders of magnitude slower on a CPU); pass --backbone {GPU_BACKBONE} to "
                         "override.")
    elif not n_gpus and config.backbone != CPU_BACKBONE:
        notes.append(f"{config.backbone} without a GPU: expect a slow run; {CPU_BACKBONE} is the CPU choice.")
    cpu_recipe = changes.get("backbone", config.backbone) == CPU_BACKBONE  # the recipe the None options follow
    why = f"the {CPU_BACKBONE} recipe" if cpu_recipe else "as the paper"
    if config.standardize is None:
        changes["standardize"] = CPU_STANDARDIZE if cpu_recipe else "none"
        notes.append(f"Input standardisation {changes['standardize']} ({why}; --standardize to choose).")
    if config.site_augment is None:
        changes["site_augment"] = CPU_SITE_AUGMENT and cpu_recipe and config.augment
        if config.augment:
            notes.append(f"Other-site augmentation {'on' if changes['site_augment'] else 'off'} ({why}; "
                         "--site-augment / --no-site-augment to choose).")
    if config.members is None:
        changes["members"] = CPU_MEMBERS if cpu_recipe else 1
        notes.append(f"{CPU_MEMBERS} models averaged into model.keras (the {CPU_BACKBONE} recipe's ensemble; "
                     "--members to choose)." if cpu_recipe else
                     "One model (as the paper; --members N for an ensemble).")
    reads = model_reads_px(config.size, config.model_px or (CPU_MODEL_PX if cpu_recipe else config.size))
    if reads != config.model_px:
        changes["model_px"] = reads
    if reads < config.size:
        notes.append(f"The model reads the {config.size} px images area-averaged to {reads} px "
                     f"({why if config.model_px is None else '--model-px'}; --model-px {config.size} reads them in "
                     "full).")
    if config.widths is None and changes.get("backbone", config.backbone) == CPU_BACKBONE:
        changes["widths"] = SMALL_CNN_WIDTHS
    changes.update(_resolve_pretrain(config, changes["run_dir"], cpu_recipe, why, n_workers, notes))
    if config.mixed_precision == "auto":
        changes["mixed_precision"] = "on" if n_gpus else "off"
        notes.append(f"Mixed precision {changes['mixed_precision']} ({'a' if n_gpus else 'no'} GPU visible).")
    elif config.mixed_precision == "on" and not n_gpus:
        notes.append("Mixed precision on without a GPU: float16 is slow on most CPUs.")
    elif config.mixed_precision == "bfloat16":
        notes.append("Mixed precision bfloat16: no loss scaling; fast only where the hardware has bfloat16 units.")
    if config.train_on_val:  # (the test split is named only where it is scored: a worker's notes never mention it)
        notes.append("The val images are fitted on too (--train-on-val): their scores are in-sample; the test images "
                     "stay held out.")
    return dataclasses.replace(config, **changes), notes


def _resolve_pretrain(config: TrainConfig, run_dir: str, cpu_recipe: bool, why: str, n_workers: int,
                      notes: list[str]) -> dict[str, Any]:
    """resolve()'s pretrain choice and the weights it implies (the run's own encoder), with a note on why."""
    changes: dict[str, Any] = {}
    if config.pretrain is None:
        # Pretraining runs on one machine (training.pretrain): a multi-worker run starts from scratch or --weights.
        changes["pretrain"] = CPU_PRETRAIN if cpu_recipe and config.weights is None and n_workers == 1 else "none"
        if cpu_recipe and config.weights is None and n_workers > 1:
            notes.append(f"No self-supervised pretraining on {n_workers} workers (it runs on one machine: train "
                         f"there with --pretrain {CPU_PRETRAIN} and pass its {RunDir.PRETRAIN}/{RunDir.ENCODER} "
                         "as --weights).")
        elif changes["pretrain"] != "none":
            notes.append(f"Self-supervised pretraining ({changes['pretrain']}) on the train and val images first "
                         f"({why}; --pretrain none to train from scratch).")
    if config.pretrain_extra and changes.get("pretrain", config.pretrain) == "none":
        raise ValueError(f"pretrain_extra adds images to a pretraining this run does not do (no --pretrain given; the "
                         f"{'run starts from --weights' if config.weights else f'recipe on {n_workers} worker(s)'}): "
                         f"pass --pretrain {CPU_PRETRAIN} on one machine, or leave --pretrain-extra out")
    if changes.get("pretrain", config.pretrain) != "none" and config.weights is None:
        changes["weights"] = os.path.abspath(RunDir(run_dir).encoder)  # made by training.pretrain
    return changes


def dtype_policy(config: TrainConfig) -> str:
    """The Keras dtype policy of a resolved config's mixed_precision."""
    if config.mixed_precision not in POLICIES:
        raise ValueError(f"mixed_precision {config.mixed_precision!r} is not resolved; call resolve() first")
    return POLICIES[config.mixed_precision]


def identity_mismatches(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """The identity options in which a resumed run differs from the one it continues (the pretraining's settings
    only where either pretrains: a run without pretraining never used them). A path option matches where it is
    the same path, or the same path relative to each config's run folder (run_relative)."""
    unused = PRETRAIN_SETTINGS if saved.pretrain == current.pretrain == "none" else ()
    saved_relative, current_relative = run_relative(saved), run_relative(current)
    return [f"{name}: {getattr(saved, name)!r} -> {getattr(current, name)!r}" for name in IDENTITY_FIELDS
            if name not in unused and getattr(saved, name) != getattr(current, name)
            and getattr(saved_relative, name) != getattr(current_relative, name)]
