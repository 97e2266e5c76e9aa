"""One training run: strategy, data, model, callbacks, and the run folder (config, history, checkpoints, logs).

Run folder layout (one model; an ensemble's is in training.ensemble): model.keras (the last epoch, or with
keep="best" the lowest val loss), backup/
(BackupAndRestore: the last completed epoch's weights, optimizer state and epoch number, for --resume),
config.json (resolved options, library versions, data fingerprint, sessions), history.csv (one row per
epoch), logs/ (TensorBoard).

Multi-worker (TF_CONFIG; docs/scaling.md): only the chief writes that layout. Every other worker runs
the same callbacks (a save may read variables through collectives, so all workers save alike) into a
temporary folder deleted when it stops, and keeps its own BackupAndRestore folder, backup-{worker}/,
since Keras lets no two callbacks share a backup_dir.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import importlib.util
import json
import math
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.records.reader import count_records, data_fingerprint, read_summary
from bnp_cxr.training.cluster import (BACKUP_DIR, Cluster, agree, patch_keras_for_multi_worker, settings_digest,
                                      start_strategy, strategy_kind)
from bnp_cxr.workspace import RunDir, read_history
from bnp_cxr.training.config import CONFIG_FILE, TrainConfig, dtype_policy, identity_mismatches, resolve
from bnp_cxr.training.inputs import check_val_split, fit_image_count, fit_splits, make_datasets, val_batching
from bnp_cxr.training.optimizers import learning_rate, make_optimizer
from bnp_cxr.training.pretrain import ensure_encoder

MODEL_FILE, HISTORY_FILE, LOG_DIR = RunDir.MODEL, RunDir.HISTORY, RunDir.LOGS
__all__ = ["BACKUP_DIR", "HISTORY_FILE", "LOG_DIR", "MODEL_FILE", "TrainResult", "completed_epochs", "count_records",
           "data_fingerprint", "learning_rate", "read_history", "strategy_kind", "tensorboard_available", "train",
           "val_batching"]


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


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on."""
    import keras
    import numpy
    import tensorflow as tf

    import bnp_cxr

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "bnp_cxr": bnp_cxr.__version__}


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


def check_run_dir(config: TrainConfig, fingerprint: dict, chief: bool, backup: str) -> dict | None:
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


def tensorboard_available() -> bool:
    """Whether the tensorboard package (which tf.summary needs) is installed; TensorFlow does not require it."""
    return importlib.util.find_spec("tensorboard") is not None


def _callbacks(out_dir: Path, backup_dir: Path, best_so_far: float | None, extra: Sequence, *,
               keep: str = "last", tensorboard: bool = True, saved=None) -> list:
    """fit's callbacks; `saved`: the model model.keras holds when it is not the one trained (finding heads)."""
    import keras

    from bnp_cxr.training.findings import SavedModelCheckpoint

    logs = [keras.callbacks.TensorBoard(log_dir=str(out_dir / LOG_DIR))] if tensorboard else []
    checkpoint = dict(filepath=str(out_dir / MODEL_FILE), monitor="val_loss", mode="min",
                      save_best_only=keep == "best", initial_value_threshold=best_so_far)
    return [
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
        *logs,
        SavedModelCheckpoint(saved, **checkpoint) if saved is not None else
        keras.callbacks.ModelCheckpoint(**checkpoint),
        # Last of ours: an epoch counts as completed only once its CSV row and model are written.
        keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True, delete_checkpoint=False),
        *extra,
    ]


@dataclass(frozen=True)
class _Start:
    """Where this session starts: the saved config.json (None for a new run), the data, epochs done, best val loss."""

    saved: dict | None
    fingerprint: dict
    done: int
    best: float | None


def _best_val_loss(history: list[dict[str, float]]) -> float | None:
    return min((row["val_loss"] for row in history if math.isfinite(row.get("val_loss", math.nan))), default=None)


def _preflight(config: TrainConfig, cluster: Cluster) -> tuple[dict, dict | None]:
    """(data fingerprint, saved config.json or None) once the records, batch size and run folder allow the run."""
    fingerprint = data_fingerprint(config.records_dir, config.size)
    images = fingerprint["images"]
    if images["train"] == 0:
        raise FileNotFoundError(f"no train records at {config.size} px in {config.records_dir}")
    train_counts = read_summary(config.records_dir).get("per_split", {}).get("train", {})
    if train_counts.get("written") and train_counts.get("no_lab") == train_counts["written"]:
        raise ValueError(f"the train records in {config.records_dir} have no BNP or BNPP (made with make_tfrecords "
                         "--unlabelled): they can join another run's pretraining (--pretrain-extra), not train one")
    if config.finding_loss_weight:  # before any pretraining: records without findings cannot train the heads
        from bnp_cxr.training.findings import finding_columns

        finding_columns(config.records_dir)
    check_val_split(config, fingerprint)
    replicas = cluster.replicas
    if replicas > 1 and (config.batch_size % replicas or images["train"] < config.batch_size
                         or 0 < images["val"] < replicas):
        raise ValueError(f"batch_size {config.batch_size} is global (split across {replicas} replicas): it must "
                         "be a multiple of the replicas and at most the number of train images, and the val "
                         "split needs an image per replica")
    return fingerprint, check_run_dir(config, fingerprint, cluster.chief, cluster.backup)


def _agree_on_resume(config: TrainConfig, cluster: Cluster) -> _Start:
    """Preflight, epochs done and the best val loss so far, agreed by every worker before anyone writes or trains."""
    run_dir = Path(config.run_dir)
    saved, failure, fingerprint, best = None, None, {}, None
    try:
        fingerprint, saved = _preflight(config, cluster)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        failure = error
    done = completed_epochs(run_dir, cluster.backup)
    if cluster.chief and failure is None:
        _trim_history(run_dir / HISTORY_FILE, done)
        best = _best_val_loss(read_history(run_dir / HISTORY_FILE))
    if cluster.n_workers > 1:
        best = agree(cluster.strategy, chief=cluster.chief, failure=failure, done=done, best=best,
                     digest=settings_digest(config, fingerprint) if failure is None else 0)
    elif failure is not None:
        raise failure
    return _Start(saved, fingerprint, done, best)


def _fit_images(config: TrainConfig, fingerprint: dict) -> str:
    return f"{fit_image_count(config, fingerprint)} {' + '.join(fit_splits(config))}"


def _announce(config: TrainConfig, cluster: Cluster, start: _Start, notes: list[str],
              log: Callable[[str], None]) -> None:
    """Complete the session's notes (what runs, on what) and log them."""
    if config.resume and start.saved is None and cluster.chief:
        notes.append(f"Nothing to resume in {config.run_dir}: starting a new run.")
    notes.append(f"Strategy {cluster.kind} ({cluster.replicas} replica(s) on {cluster.n_workers} worker(s)), global "
                 f"batch {config.batch_size}; {_fit_images(config, start.fingerprint)} images at {config.size} "
                 f"px; epochs {start.done}..{config.epochs - 1} to run; {dtype_policy(config)}, XLA "
                 f"{'on' if config.xla else 'off'}.")
    if cluster.chief and not tensorboard_available():
        notes.append("TensorBoard is not installed (pip install tensorboard): no logs/ for this run.")
    for note in notes:
        log(note if cluster.chief else f"[{cluster.worker}] {note}")


@contextlib.contextmanager
def _output_folder(run_dir: Path, cluster: Cluster) -> Iterator[Path]:
    """Where this worker's callbacks write: the run folder for the chief.

    Another worker's model, history and logs only mirror the chief's: a folder of its own, deleted at the end.
    """
    if cluster.chief:
        yield run_dir
        return
    out_dir = Path(tempfile.mkdtemp(prefix=f"bnp-cxr-{cluster.worker}-"))
    try:
        yield out_dir
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@contextlib.contextmanager
def _global_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to `name` for the block, then restored."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _compile(config: TrainConfig, cluster: Cluster, steps: int, element_spec, log: Callable[[str], None]):
    """(the model trained, the model model.keras holds), built and compiled in the strategy's scope (and patched
    for multi-worker fit); the two differ only with finding heads (training.findings)."""
    from bnp_cxr.models import build_model, synchronize_batchnorm
    from bnp_cxr.training.findings import WithFindingLoss, with_finding_heads
    from bnp_cxr.training.losses import LOSSES, default_metrics
    from bnp_cxr.training.ranking import WithRankLoss

    with cluster.strategy.scope():
        model = build_model(config.backbone, config.size, weights=config.weights, dropout=config.dropout,
                            model_px=config.model_px, widths=config.widths, log=log if cluster.chief else None)
        if config.sync_batchnorm:
            synchronized = synchronize_batchnorm(model)
            if cluster.chief:
                log(f"BatchNorm synchronised across replicas in {synchronized} layer(s).")
        saved, loss = model, LOSSES[config.loss](config.loss_weights)
        if config.finding_loss_weight:  # the targets' columns after the two labs are the findings
            # model.keras is compiled with the lab loss alone, as any run's (its own optimizer is never stepped)
            saved.compile(optimizer=make_optimizer(config, steps), loss=loss, metrics=default_metrics())
            model = with_finding_heads(saved, element_spec[1].shape[-1] - 2)
            loss = WithFindingLoss(config.loss, config.loss_weights, config.finding_loss_weight)
        elif config.rank_loss_weight:
            loss = WithRankLoss(config.loss, config.loss_weights, config.rank_loss_weight)
        # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer; outputs stay float32.
        model.compile(optimizer=make_optimizer(config, steps), loss=loss, metrics=default_metrics(),
                      jit_compile=config.xla)
    if cluster.kind == "multi_worker":
        patch_keras_for_multi_worker(model, element_spec)
    return model, saved


def saved_options(config: TrainConfig) -> dict[str, Any]:
    """The options a run's config.json keeps (all but resume, which is this session's, not the run's)."""
    return {key: value for key, value in config.to_json().items() if key != "resume"}


def session_record(config: TrainConfig, **details) -> dict[str, Any]:
    """One entry of a config.json's sessions: when this session started, whether it resumed, its epochs."""
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "resumed": config.resume, "epochs": config.epochs, **details}


def _write_run_config(config: TrainConfig, cluster: Cluster, start: _Start, model, steps: int,
                      notes: list[str]) -> None:
    """config.json: the options and the latest session's environment at the top level; each session keeps its own."""
    environment = {"versions": library_versions(),
                   "hardware": {"gpus": cluster.n_gpus, "strategy": cluster.kind, "replicas": cluster.replicas,
                                "workers": cluster.n_workers},
                   "compute": {"dtype_policy": dtype_policy(config), "jit_compile": bool(model.jit_compile),
                               "optimizer": type(model.optimizer).__name__}}
    sessions = [*(start.saved or {}).get("sessions", []),
                session_record(config, initial_epoch=start.done, **environment, notes=notes)]
    write_json(Path(config.run_dir) / CONFIG_FILE, {**saved_options(config), **environment,
                                                   "data": start.fingerprint, "steps_per_epoch": steps,
                                                   "sessions": sessions})


def _fit(model, config: TrainConfig, cluster: Cluster, start: _Start, out_dir: Path, data: tuple, *,
         callbacks: Sequence, verbose: int | str, log: Callable[[str], None], saved=None) -> list[dict[str, float]]:
    """Train the epochs left (none when the run is complete); returns this worker's history file's rows."""
    train_data, val_data, steps = data
    run_dir = Path(config.run_dir)
    if start.done < config.epochs:
        model.fit(train_data, validation_data=val_data, epochs=config.epochs, steps_per_epoch=steps,
                  shuffle=False, verbose=verbose,
                  callbacks=_callbacks(out_dir, run_dir / cluster.backup, start.best, callbacks, keep=config.keep,
                                       tensorboard=cluster.chief and tensorboard_available(),
                                       saved=saved if saved is not model else None))
    else:
        log(f"{run_dir} already completed {start.done} of {config.epochs} epochs: nothing to train.")
    return read_history(out_dir / HISTORY_FILE)


def train(config: TrainConfig, *, callbacks: Sequence = (), verbose: int | str = 1,
          log: Callable[[str], None] = print, cluster: Cluster | None = None) -> TrainResult:
    """Train (or resume) a run as configured; see the module docstring for what the run folder holds.

    With members > 1 the run is an ensemble (training.ensemble): each member a run of this kind in
    members/member{k}/, model.keras their average. `cluster`: a strategy already started (an ensemble's).
    """
    import keras

    cluster = cluster or start_strategy()  # before any other TensorFlow work
    config, notes = resolve(config, cluster.n_gpus, cluster.n_workers)
    if config.members > 1:
        from bnp_cxr.training.ensemble import train_ensemble

        return train_ensemble(config, cluster, notes, callbacks=callbacks, verbose=verbose, log=log)
    run_dir = Path(config.run_dir)
    start = _agree_on_resume(config, cluster)
    _announce(config, cluster, start, notes, log)
    ensure_encoder(config, start.fingerprint, workers=cluster.n_workers, log=log)
    with _output_folder(run_dir, cluster) as out_dir:
        keras.utils.set_random_seed(config.seed)
        with _global_policy(dtype_policy(config)):
            out_dir.mkdir(parents=True, exist_ok=True)
            train_data, val_data, steps, left_out = make_datasets(config, start.fingerprint, cluster.replicas,
                                                                  cluster.n_workers, config.epochs - start.done)
            if left_out and cluster.chief:
                log(f"Validation leaves out the last {left_out} val image(s) each epoch: every one of the "
                    f"{cluster.replicas} replicas needs a non-empty batch (the test evaluation uses all).")
            model, saved = _compile(config, cluster, steps, train_data.element_spec, log)
            if cluster.chief:
                _write_run_config(config, cluster, start, model, steps, notes)
            history = _fit(model, config, cluster, start, out_dir, (train_data, val_data, steps),
                           callbacks=callbacks, verbose=verbose, log=log, saved=saved)
    return TrainResult(run_dir=run_dir, model_path=run_dir / MODEL_FILE, config=config,
                       epochs_completed=completed_epochs(run_dir, cluster.backup), history=history,
                       best_val_loss=_best_val_loss(history), notes=notes, chief=cluster.chief)
