"""One training run: strategy, data, model, callbacks, and the run folder (config, history, checkpoints, logs).

Run folder layout: model.keras (best by val loss), backup/ (BackupAndRestore: the last completed
epoch's weights, optimizer state and epoch number, for --resume), config.json (resolved options,
library versions, data fingerprint, sessions), history.csv (one row per epoch), logs/ (TensorBoard).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import importlib.util
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bnp_cxr.training.config import CONFIG_FILE, TrainConfig, gpus_visible, identity_mismatches, resolve

SPLITS = ("train", "val", "test")
MODEL_FILE, HISTORY_FILE, BACKUP_DIR, LOG_DIR = "model.keras", "history.csv", "backup", "logs"


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: where, how far it got, and the per-epoch history."""

    run_dir: Path
    model_path: Path
    config: TrainConfig
    epochs_completed: int
    history: list[dict[str, float]]
    best_val_loss: float | None
    notes: list[str]
    chief: bool = True  # only the chief of a multi-worker run owns run_dir (and evaluates)


def strategy_kind(tf_config: str | None, n_gpus: int) -> str:
    """'multi_worker' when TF_CONFIG names a cluster of several tasks, 'mirrored' for > 1 GPU, else 'default'."""
    if tf_config:
        cluster = json.loads(tf_config).get("cluster", {})
        if sum(len(tasks) for tasks in cluster.values()) > 1:
            return "multi_worker"
    return "mirrored" if n_gpus > 1 else "default"


def make_strategy(kind: str):
    """The tf.distribute strategy of a kind (see strategy_kind)."""
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy kind {kind!r}")


def worker_role(strategy) -> tuple[bool, str]:
    """(is this the chief, a name for this worker); single-machine strategies are always the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True, "chief"
    task_type, task_id = resolver.task_type, resolver.task_id
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return chief, f"{task_type}{task_id}"


def data_fingerprint(records_dir: str | os.PathLike, size: int) -> dict[str, Any]:
    """sha256 over the shard names and byte sizes of every split at `size` and that size's image counts.

    Only what this size's records hold counts: rewriting other sizes (which rewrites summary.json, with
    its timings) must not make a finished run at this size look stale.
    """
    from bnp_cxr.records.reader import list_shards

    records = Path(records_dir)
    hasher = hashlib.sha256()
    shards = {}
    for split in SPLITS:
        try:
            paths = [Path(path) for path in list_shards(records, split, size)]
        except FileNotFoundError:
            paths = []
        shards[split] = len(paths)
        for path in paths:
            hasher.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    summary = records / "summary.json"
    if summary.is_file():
        per_size = json.loads(summary.read_text()).get("per_size", {}).get(str(size), {})
        hasher.update(json.dumps(per_size, sort_keys=True).encode())
    return {"sha256": hasher.hexdigest(), "size": size, "shards": shards, "summary_json": summary.is_file(),
            "images": {split: count_records(records, split, size) if shards[split] else 0 for split in SPLITS}}


def count_records(records_dir: str | os.PathLike, split: str, size: int) -> int:
    """Images of a split at a size: from summary.json when it lists them, else by reading the shards."""
    summary = Path(records_dir) / "summary.json"
    if summary.is_file():
        per_size = json.loads(summary.read_text()).get("per_size", {}).get(str(size))
        if per_size is not None:
            return int(per_size.get(split, 0))
    import tensorflow as tf

    from bnp_cxr.records.reader import list_shards

    dataset = tf.data.TFRecordDataset(list_shards(records_dir, split, size))
    return int(dataset.reduce(0, lambda count, _: count + 1))


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on."""
    import keras
    import numpy
    import tensorflow as tf

    import bnp_cxr

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "bnp_cxr": bnp_cxr.__version__}


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """A float for a constant rate, else a keras schedule (cosine decay and / or linear warm-up), per step."""
    import keras

    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "constant" and warmup_steps == 0:
        return config.lr
    total_steps = config.epochs * steps_per_epoch
    # CosineDecay with alpha=1 never decays: a constant rate after the warm-up.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.lr, decay_steps=max(total_steps - warmup_steps, 1),
        alpha=1.0 if config.schedule == "constant" else 0.0,
        warmup_target=config.lr if warmup_steps else None, warmup_steps=warmup_steps)


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of a CSVLogger file as floats (epoch as int); [] when absent."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def _trim_history(path: Path, completed_epochs: int) -> None:
    # An interruption between the CSV row and the backup leaves a row for an epoch that will be rerun.
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0], *(row for row in rows[1:] if int(row[0]) < completed_epochs)] if rows else []
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    os.replace(temp, path)


def completed_epochs(run_dir: Path) -> int:
    """Epochs completed so far according to the run's BackupAndRestore metadata (0 for a new run)."""
    metadata = run_dir / BACKUP_DIR / "training_metadata.json"
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.is_file() else 0


def _write_json(path: Path, document: dict) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temp, path)


def _check_run_dir(config: TrainConfig, fingerprint: dict) -> dict | None:
    """The saved config.json of a run being resumed (None for a new run); refuses unsafe reuse."""
    run_dir = Path(config.run_dir)
    saved_path = run_dir / CONFIG_FILE
    if not config.resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"run folder {run_dir} already exists and is not empty; pass --resume to "
                                  "continue that run, or choose another --run-dir")
        return None
    if not saved_path.is_file():
        return None
    saved = json.loads(saved_path.read_text())
    mismatches = identity_mismatches(TrainConfig.from_json(saved), config)
    if saved.get("data", {}).get("sha256") != fingerprint["sha256"]:
        mismatches.append("training data fingerprint changed (records rewritten or different records)")
    if mismatches:
        raise ValueError(f"cannot resume {run_dir}: it was started with different settings: " + "; ".join(mismatches))
    return saved


def _datasets(config: TrainConfig, n_train: int, n_val: int, multi_worker: bool):
    import tensorflow as tf

    from bnp_cxr.records.reader import AugmentConfig, make_dataset

    # Full batches only (when there are enough images): BatchNorm on a 1-image remainder is noise.
    drop = n_train >= config.batch_size
    train = make_dataset(config.records_dir, "train", config.size, batch_size=config.batch_size, training=True,
                         augment=AugmentConfig() if config.augment else None, shuffle_buffer=config.shuffle_buffer,
                         cache=config.cache, seed=config.seed, drop_remainder=drop)
    try:
        val = make_dataset(config.records_dir, "val", config.size, batch_size=config.batch_size, cache=config.cache,
                           deterministic=True)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; training needs a val split to pick the best epoch") from None
    if multi_worker:  # shard by element: there may be fewer shard files than workers
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train, val = train.with_options(options), val.with_options(options)
    else:
        # A known length: Keras then reads the val set whole each epoch without probing past its end.
        val = val.apply(tf.data.experimental.assert_cardinality(math.ceil(n_val / config.batch_size)))
    steps = n_train // config.batch_size if drop else 1
    # Repeated with explicit steps: Keras then never probes past the end of an epoch of unknown length
    # (which costs an optimizer step count per epoch) and every worker runs the same number of steps.
    return train.repeat(), val, steps


def tensorboard_available() -> bool:
    """Whether the tensorboard package (which tf.summary needs) is installed; TensorFlow does not require it."""
    return importlib.util.find_spec("tensorboard") is not None


def _callbacks(out_dir: Path, best_so_far: float | None, extra: Sequence) -> list:
    import keras

    tensorboard = [keras.callbacks.TensorBoard(log_dir=str(out_dir / LOG_DIR))] if tensorboard_available() else []
    return [
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
        *tensorboard,
        keras.callbacks.ModelCheckpoint(str(out_dir / MODEL_FILE), monitor="val_loss", mode="min",
                                        save_best_only=True, initial_value_threshold=best_so_far),
        # Last of ours: an epoch counts as completed only once its CSV row and best model are written.
        keras.callbacks.BackupAndRestore(str(out_dir / BACKUP_DIR), double_checkpoint=True,
                                         delete_checkpoint=False),
        *extra,
    ]


def train(config: TrainConfig, *, callbacks: Sequence = (), verbose: int | str = 1,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) a run as configured; see the module docstring for what the run folder holds."""
    import keras

    from bnp_cxr.models import build_model
    from bnp_cxr.training.losses import MaskedL1, default_metrics

    # MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    n_gpus = gpus_visible()
    kind = strategy_kind(os.environ.get("TF_CONFIG"), n_gpus)
    strategy = make_strategy(kind)
    config, notes = resolve(config, n_gpus)
    chief, worker = worker_role(strategy)
    run_dir = Path(config.run_dir)
    fingerprint = data_fingerprint(config.records_dir, config.size)
    n_train = fingerprint["images"]["train"]
    if n_train == 0:
        raise FileNotFoundError(f"no train records at {config.size} px in {config.records_dir}")
    saved = _check_run_dir(config, fingerprint)
    if config.resume and saved is None:
        notes.append(f"Nothing to resume in {run_dir}: starting a new run.")
    # Non-chief workers still run every callback (saving involves collectives) but write elsewhere.
    out_dir = run_dir if chief else run_dir / "workers" / worker
    out_dir.mkdir(parents=True, exist_ok=True)
    done = completed_epochs(out_dir)
    _trim_history(out_dir / HISTORY_FILE, done)
    history = read_history(out_dir / HISTORY_FILE)
    best = min((row["val_loss"] for row in history if math.isfinite(row.get("val_loss", math.nan))), default=None)
    notes.append(f"Strategy {kind} ({strategy.num_replicas_in_sync} replica(s)), global batch {config.batch_size}; "
                 f"{n_train} train images at {config.size} px; epochs {done}..{config.epochs - 1} to run.")
    if not tensorboard_available():
        notes.append("TensorBoard is not installed (pip install tensorboard): no logs/ for this run.")
    for note in notes:
        log(note)

    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision == "on" else "float32")
    try:
        train_data, val_data, steps = _datasets(config, n_train, fingerprint["images"]["val"],
                                                kind == "multi_worker")
        with strategy.scope():
            model = build_model(config.backbone, config.size, weights=config.weights, dropout=config.dropout)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate(config, steps)),
                          loss=MaskedL1(config.loss_weights), metrics=default_metrics())
        if chief:
            # Top level: the options and the latest session's environment; each session keeps its own.
            environment = {"versions": library_versions(),
                           "hardware": {"gpus": n_gpus, "strategy": kind, "replicas": strategy.num_replicas_in_sync}}
            sessions = (saved or {}).get("sessions", [])
            sessions.append({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             "resumed": config.resume, "initial_epoch": done, "epochs": config.epochs,
                             **environment, "notes": notes})
            options = {key: value for key, value in config.to_json().items() if key != "resume"}
            _write_json(run_dir / CONFIG_FILE, {**options, **environment, "data": fingerprint,
                                                "steps_per_epoch": steps, "sessions": sessions})
        if done < config.epochs:
            model.fit(train_data, validation_data=val_data, epochs=config.epochs, steps_per_epoch=steps,
                      shuffle=False, callbacks=_callbacks(out_dir, best, callbacks), verbose=verbose)
        else:
            log(f"{run_dir} already completed {done} of {config.epochs} epochs: nothing to train.")
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    history = read_history(out_dir / HISTORY_FILE)
    losses = [row["val_loss"] for row in history if math.isfinite(row.get("val_loss", math.nan))]
    return TrainResult(run_dir=run_dir, model_path=run_dir / MODEL_FILE, config=config,
                       epochs_completed=completed_epochs(out_dir), history=history,
                       best_val_loss=min(losses) if losses else None, notes=notes, chief=chief)
