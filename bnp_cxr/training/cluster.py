"""Distribution: which tf.distribute strategy a run uses, worker roles, and the multi-worker start-up check.

Multi-worker training follows the TensorFlow tutorial "Multi-worker training with Keras"
(tensorflow.org/tutorials/distribute/multi_worker_with_keras): TF_CONFIG names the cluster, the
strategy is created before any other TensorFlow work, batches are global, and only the chief keeps
what it saves. Keras 3 (3.15) needs two fixes for MultiWorkerMirroredStrategy in Model.fit
(keras-team/keras#20585, tensorflow/tensorflow#72388): see `patch_keras_for_multi_worker`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from bnp_cxr.workspace import RunDir
from bnp_cxr.training.config import IDENTITY_FIELDS, TrainConfig, gpus_visible
from bnp_cxr.training.run_paths import run_relative

BACKUP_DIR = RunDir.BACKUP


def strategy_kind(tf_config: str | None, n_gpus: int) -> str:
    """'multi_worker' when TF_CONFIG names a cluster of several tasks, 'mirrored' for > 1 GPU, else 'default'."""
    if tf_config:
        cluster = json.loads(tf_config).get("cluster", {})
        if sum(len(tasks) for tasks in cluster.values()) > 1:
            return "multi_worker"
    return "mirrored" if n_gpus > 1 else "default"


def make_strategy(kind: str, n_gpus: int = 0):
    """The tf.distribute strategy of a kind (see strategy_kind); 'default' with a GPU is OneDeviceStrategy.

    Under any strategy Keras feeds fit through strategy.experimental_distribute_dataset, whose iterator
    prefetches each batch onto the replica's device; the default strategy would copy it at step start.
    """
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "default":
        return tf.distribute.OneDeviceStrategy("/gpu:0") if n_gpus else tf.distribute.get_strategy()
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


def worker_count(strategy) -> int:
    """Workers (chief included) in the strategy's cluster; 1 on a single machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(cluster.get(job, ())) for job in ("chief", "worker")))


def backup_name(chief: bool, worker: str) -> str:
    """A worker's BackupAndRestore folder in the run folder: backup/ for the chief, backup-{worker}/ otherwise.

    Keras: a backup_dir "cannot be reused elsewhere", so each worker keeps its own, and resumes from it.
    """
    return BACKUP_DIR if chief else f"{BACKUP_DIR}-{worker}"


@dataclass(frozen=True)
class Cluster:
    """This process's place in a run: its strategy, whether it is the chief, and its name."""

    strategy: Any
    kind: str
    n_gpus: int
    chief: bool
    worker: str
    n_workers: int

    @property
    def replicas(self) -> int:
        """Replicas in sync across the cluster (every GPU of every worker)."""
        return self.strategy.num_replicas_in_sync

    @property
    def backup(self) -> str:
        """This worker's BackupAndRestore folder in the run folder (see backup_name)."""
        return backup_name(self.chief, self.worker)


def start_strategy() -> Cluster:
    """The run's tf.distribute strategy and this worker's role; MultiWorkerMirroredStrategy needs it first."""
    n_gpus = gpus_visible()
    kind = strategy_kind(os.environ.get("TF_CONFIG"), n_gpus)
    strategy = make_strategy(kind, n_gpus)
    chief, worker = worker_role(strategy)
    return Cluster(strategy, kind, n_gpus, chief, worker, worker_count(strategy))


def settings_digest(config: TrainConfig, fingerprint: dict) -> int:
    """24 bits of sha256 over what every worker must share: identity options but records_dir, epochs, data.

    Paths count relative to the run folder (run_relative): workers may mount a shared workspace at different paths.
    """
    relative = run_relative(config)
    shared = {name: getattr(relative, name) for name in IDENTITY_FIELDS if name != "records_dir"}
    document = json.dumps({**shared, "epochs": config.epochs, "data": fingerprint.get("sha256")}, sort_keys=True,
                          default=list)
    return int(hashlib.sha256(document.encode()).hexdigest()[:6], 16)  # exact in float64 on the wire


def agree(strategy, *, chief: bool, failure: Exception | None, digest: int, done: int,
          best: float | None) -> float | None:
    """Compare every worker's start (an all-gather), raise on any failure or mismatch; returns the chief's best.

    Called before anyone writes or trains: a worker that raised alone would leave the others blocked in
    their first collective, so each shares whether it can start, and all stop together.
    """
    import numpy as np
    import tensorflow as tf

    row = [float(chief), float(failure is None), float(digest), float(done), math.nan if best is None else best]
    local = strategy.experimental_distribute_values_from_function(lambda _: tf.constant([row], tf.float64))
    rows = strategy.gather(local, axis=0).numpy()
    if failure is not None:
        raise failure
    if not rows[:, 1].all():
        raise ValueError("another worker could not start (its log says why): stopping this one too")
    if len(np.unique(rows[:, 2])) > 1:
        raise ValueError("workers were started with different options or records: run the same command, with "
                         "the same records, on every machine")
    if len(np.unique(rows[:, 3])) > 1:
        raise ValueError(f"workers completed different numbers of epochs ({sorted(set(rows[:, 3].astype(int)))}): "
                         "each resumes from its own backup folder; give every worker the same epoch's backup")
    chief_best = float(rows[rows[:, 0] == 1][0, 4])
    return None if math.isnan(chief_best) else chief_best


def patch_keras_for_multi_worker(model, element_spec) -> None:
    """Work around Keras 3's Model.fit under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    1. fit and evaluate learn input shapes by all-reducing a first batch, which the strategy rejects
       ("Attempt to convert a value (PerReplica...)"): build from the dataset's spec instead, once.
    2. Each step's logs are averaged across workers along axis 0, which scalars do not have ("Invalid
       reduction dimension 0 ... 0 dimensions"): average scalars as a whole. Epoch logs are unaffected:
       Keras reads them from the metrics, whose variables sum across workers.
    """
    import keras
    from keras.src.backend.tensorflow import trainer as tf_trainer

    symbolic = tuple(keras.KerasTensor(tuple(spec.shape), spec.dtype.name) for spec in element_spec)
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=symbolic)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    original = tf_trainer.reduce_per_replica
    if getattr(original, "scalar_safe", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def reduce(value):
                # With one replica per worker the value is a plain tensor, else PerReplica.
                local = value.values[0] if tf_trainer._is_per_replica_instance(value) else value
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original(value, strategy, reduction)

            return keras.tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica.scalar_safe = True
    tf_trainer.reduce_per_replica = reduce_per_replica
