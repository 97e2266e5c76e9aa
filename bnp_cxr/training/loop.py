"""One training run: strategy, data, model, callbacks, and the run folder (config, history, checkpoints, logs).

Run folder layout: model.keras (best by val loss), backup/ (BackupAndRestore: the last completed
epoch's weights, optimizer state and epoch number, for --resume), config.json (resolved options,
library versions, data fingerprint, sessions), history.csv (one row per epoch), logs/ (TensorBoard).

Multi-worker (TF_CONFIG; docs/scaling.md): only the chief writes that layout. Every other worker runs
the same callbacks (a save may read variables through collectives, so all workers save alike) into a
temporary folder deleted when it stops, and keeps its own BackupAndRestore folder, backup-{worker}/,
since Keras lets no two callbacks share a backup_dir.
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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.training.cluster import (BACKUP_DIR, agree, backup_name, make_strategy, patch_keras_for_multi_worker,
                                      settings_digest, strategy_kind, worker_count, worker_role)
from bnp_cxr.workspace import SPLITS, RunDir
from bnp_cxr.training.config import CONFIG_FILE, TrainConfig, dtype_policy, gpus_visible, identity_mismatches, resolve

MODEL_FILE, HISTORY_FILE, LOG_DIR = RunDir.MODEL, RunDir.HISTORY, RunDir.LOGS
__all__ = ["BACKUP_DIR", "HISTORY_FILE", "LOG_DIR", "MODEL_FILE", "TrainResult", "completed_epochs", "count_records",
           "data_fingerprint", "learning_rate", "read_history", "strategy_kind", "tensorboard_available", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: where, how far it got, and the per-epoch history.

    On a non-chief worker run_dir / model_path are the chief's, and history covers this session only.
    """

    run_dir: Path
    model_path: Path
    config: TrainConfig
    epochs_completed: int
    history: list[dict[str, float]]
    best_val_loss: float | None
    notes: list[str]
    chief: bool = True  # only the chief of a multi-worker run owns run_dir (and evaluates)


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
    with atomic_path(path) as temp, open(temp, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


def completed_epochs(run_dir: Path, backup: str = BACKUP_DIR) -> int:
    """Epochs completed so far according to a BackupAndRestore folder's metadata (0 for a new run)."""
    metadata = Path(run_dir) / backup / "training_metadata.json"
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.is_file() else 0


def _check_run_dir(config: TrainConfig, fingerprint: dict, chief: bool, backup: str) -> dict | None:
    """The saved config.json of a run being resumed (None for a new run); refuses unsafe reuse.

    The chief owns the run folder; another worker only checks its own backup folder (the chief may
    already be writing the run folder, or it may be on another machine).
    """
    run_dir = Path(config.run_dir)
    saved_path = run_dir / CONFIG_FILE
    if not chief:
        if not config.resume and (run_dir / backup).exists():
            raise FileExistsError(f"{run_dir / backup} holds this worker's state from an earlier run; pass --resume "
                                  "to continue that run, or choose another --run-dir")
        return None
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


def val_batching(n_val: int, batch_size: int, replicas: int) -> tuple[int, int]:
    """(val batch size, val images left out each epoch): every replica must get a non-empty batch.

    One replica: batch_size, the last batch partial. Several: a partial batch is split by the
    per-replica size, leaving some replicas an empty batch, which Keras cannot run (BatchNorm shape
    error). So the val batch is the largest multiple of `replicas` <= batch_size whose remainder is the
    unavoidable n_val mod replicas, and that remainder (< replicas images) is left out.
    """
    if replicas == 1:
        return batch_size, 0
    candidates = range(replicas * max(1, batch_size // replicas), 0, -replicas)
    batch = next(size for size in candidates if n_val % size == n_val % replicas)
    return batch, n_val % replicas


def _datasets(config: TrainConfig, fingerprint: dict, replicas: int, n_workers: int):
    import tensorflow as tf

    from bnp_cxr.records.reader import AugmentConfig, make_dataset

    n_train, n_val = fingerprint["images"]["train"], fingerprint["images"]["val"]
    # Full batches only (when there are enough images): BatchNorm on a 1-image remainder is noise.
    drop = n_train >= config.batch_size
    train = make_dataset(config.records_dir, "train", config.size, batch_size=config.batch_size, training=True,
                         augment=AugmentConfig() if config.augment else None, shuffle_buffer=config.shuffle_buffer,
                         cache=config.cache, seed=config.seed, drop_remainder=drop)
    val_batch, left_out = val_batching(n_val, config.batch_size, replicas)
    try:
        val = make_dataset(config.records_dir, "val", config.size, batch_size=val_batch, cache=config.cache,
                           deterministic=True, drop_remainder=left_out > 0)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; training needs a val split to pick the best epoch") from None
    # A known length: Keras then reads the val set whole each epoch without probing past its end.
    val = val.apply(tf.data.experimental.assert_cardinality(n_val // val_batch if left_out else
                                                            math.ceil(n_val / val_batch)))
    if n_workers > 1:
        # Batches are global: the strategy splits each into per-replica batches (tf.distribute input docs).
        # Sharding by DATA: every worker reads every record and keeps its share of each batch. FILE sharding
        # (each worker reads only its files) is refused by tf.data here: the augmentation's seed stream is a
        # source that is not a file, and a split with fewer shard files than workers cannot be split by file.
        # A deterministic order makes the workers' shares an exact partition of each epoch.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        options.deterministic = True
        train, val = train.with_options(options), val.with_options(options)
    steps = n_train // config.batch_size if drop else 1
    # Repeated with explicit steps: Keras then never probes past the end of an epoch of unknown length
    # (which costs an optimizer step count per epoch) and every worker runs the same number of steps.
    return train.repeat(), val, steps, left_out


def tensorboard_available() -> bool:
    """Whether the tensorboard package (which tf.summary needs) is installed; TensorFlow does not require it."""
    return importlib.util.find_spec("tensorboard") is not None


def _callbacks(out_dir: Path, backup_dir: Path, best_so_far: float | None, extra: Sequence, *,
               tensorboard: bool = True) -> list:
    import keras

    logs = [keras.callbacks.TensorBoard(log_dir=str(out_dir / LOG_DIR))] if tensorboard else []
    return [
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
        *logs,
        keras.callbacks.ModelCheckpoint(str(out_dir / MODEL_FILE), monitor="val_loss", mode="min",
                                        save_best_only=True, initial_value_threshold=best_so_far),
        # Last of ours: an epoch counts as completed only once its CSV row and best model are written.
        keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True, delete_checkpoint=False),
        *extra,
    ]


def train(config: TrainConfig, *, callbacks: Sequence = (), verbose: int | str = 1,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) a run as configured; see the module docstring for what the run folder holds."""
    import keras

    from bnp_cxr.models import build_model, synchronize_batchnorm
    from bnp_cxr.training.losses import MaskedL1, default_metrics

    # MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    n_gpus = gpus_visible()
    kind = strategy_kind(os.environ.get("TF_CONFIG"), n_gpus)
    strategy = make_strategy(kind, n_gpus)
    config, notes = resolve(config, n_gpus)
    chief, worker = worker_role(strategy)
    n_workers = worker_count(strategy)
    run_dir, backup = Path(config.run_dir), backup_name(chief, worker)
    saved, failure, fingerprint, best = None, None, {}, None
    try:
        fingerprint = data_fingerprint(config.records_dir, config.size)
        if fingerprint["images"]["train"] == 0:
            raise FileNotFoundError(f"no train records at {config.size} px in {config.records_dir}")
        replicas = strategy.num_replicas_in_sync
        if replicas > 1 and (config.batch_size % replicas or fingerprint["images"]["train"] < config.batch_size
                             or fingerprint["images"]["val"] < replicas):
            raise ValueError(f"batch_size {config.batch_size} is global (split across {replicas} replicas): it must "
                             "be a multiple of the replicas and at most the number of train images, and the val "
                             "split needs an image per replica")
        saved = _check_run_dir(config, fingerprint, chief, backup)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        failure = error
    done = completed_epochs(run_dir, backup)
    if chief and failure is None:
        _trim_history(run_dir / HISTORY_FILE, done)
        best = min((row["val_loss"] for row in read_history(run_dir / HISTORY_FILE)
                    if math.isfinite(row.get("val_loss", math.nan))), default=None)
    if n_workers > 1:
        best = agree(strategy, chief=chief, failure=failure, done=done, best=best,
                     digest=settings_digest(config, fingerprint) if failure is None else 0)
    elif failure is not None:
        raise failure
    if config.resume and saved is None and chief:
        notes.append(f"Nothing to resume in {run_dir}: starting a new run.")
    n_train = fingerprint["images"]["train"]
    notes.append(f"Strategy {kind} ({strategy.num_replicas_in_sync} replica(s) on {n_workers} worker(s)), global "
                 f"batch {config.batch_size}; {n_train} train images at {config.size} px; epochs "
                 f"{done}..{config.epochs - 1} to run; {dtype_policy(config)}, XLA {'on' if config.xla else 'off'}.")
    if chief and not tensorboard_available():
        notes.append("TensorBoard is not installed (pip install tensorboard): no logs/ for this run.")
    for note in notes:
        log(note if chief else f"[{worker}] {note}")

    # Another worker's model, history and logs only mirror the chief's: a folder of its own, deleted at the end.
    out_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix=f"bnp-cxr-{worker}-"))
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(dtype_policy(config))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        train_data, val_data, steps, left_out = _datasets(config, fingerprint, strategy.num_replicas_in_sync,
                                                          n_workers)
        if left_out and chief:
            log(f"Validation leaves out the last {left_out} val image(s) each epoch: every one of the "
                f"{strategy.num_replicas_in_sync} replicas needs a non-empty batch (the test evaluation uses all).")
        with strategy.scope():
            model = build_model(config.backbone, config.size, weights=config.weights, dropout=config.dropout)
            if config.sync_batchnorm:
                synchronized = synchronize_batchnorm(model)
                if chief:
                    log(f"BatchNorm synchronised across replicas in {synchronized} layer(s).")
            # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer; outputs stay float32.
            model.compile(optimizer=keras.optimizers.Adam(learning_rate(config, steps)),
                          loss=MaskedL1(config.loss_weights), metrics=default_metrics(), jit_compile=config.xla)
        if kind == "multi_worker":
            patch_keras_for_multi_worker(model, train_data.element_spec)
        if chief:
            # Top level: the options and the latest session's environment; each session keeps its own.
            environment = {"versions": library_versions(),
                           "hardware": {"gpus": n_gpus, "strategy": kind, "replicas": strategy.num_replicas_in_sync,
                                        "workers": n_workers},
                           "compute": {"dtype_policy": dtype_policy(config), "jit_compile": bool(model.jit_compile),
                                       "optimizer": type(model.optimizer).__name__}}
            sessions = (saved or {}).get("sessions", [])
            sessions.append({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             "resumed": config.resume, "initial_epoch": done, "epochs": config.epochs,
                             **environment, "notes": notes})
            options = {key: value for key, value in config.to_json().items() if key != "resume"}
            write_json(run_dir / CONFIG_FILE, {**options, **environment, "data": fingerprint,
                                               "steps_per_epoch": steps, "sessions": sessions})
        if done < config.epochs:
            model.fit(train_data, validation_data=val_data, epochs=config.epochs, steps_per_epoch=steps,
                      shuffle=False, verbose=verbose,
                      callbacks=_callbacks(out_dir, run_dir / backup, best, callbacks,
                                           tensorboard=chief and tensorboard_available()))
        else:
            log(f"{run_dir} already completed {done} of {config.epochs} epochs: nothing to train.")
        history = read_history(out_dir / HISTORY_FILE)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)
    losses = [row["val_loss"] for row in history if math.isfinite(row.get("val_loss", math.nan))]
    return TrainResult(run_dir=run_dir, model_path=run_dir / MODEL_FILE, config=config,
                       epochs_completed=completed_epochs(run_dir, backup), history=history,
                       best_val_loss=min(losses) if losses else None, notes=notes, chief=chief)
