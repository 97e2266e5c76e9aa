"""Multi-worker training (two CPU workers on loopback ports via TF_CONFIG) and the GPU-path options on CPU."""

import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from archives import heart_records
from bnp_cxr.training import TrainConfig, make_config, train
from bnp_cxr.training.cluster import backup_name, settings_digest, worker_count, worker_role
from bnp_cxr.training.loop import HISTORY_FILE, MODEL_FILE, read_history, val_batching

ROOT = Path(__file__).resolve().parents[1]
# 9 val images: with 2 replicas the last one cannot be split, so validation also covers that rule.
SPLIT_SIZES = {"train": 16, "val": 9, "test": 4}
TIMEOUT_S = 240  # two TensorFlow start-ups on a shared 2-core runner; one epoch itself takes seconds


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLIT_SIZES, (64,),
                         severities=lambda rng, count: rng.random(count), seed=3,
                         bnp_on=lambda index: index % 3 == 0 or index % 4 == 0, bnpp_on=lambda index: index % 3 != 0)


# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("n_val, batch_size, replicas, expected", [
    (9, 8, 1, (8, 0)),  # one replica: a partial last batch is fine
    (9, 8, 2, (8, 1)),
    (13, 8, 2, (6, 1)),  # 13 = 2 x 6 + 1: only the unavoidable image is left out
    (16, 8, 2, (8, 0)),
    (100, 32, 4, (20, 0)),
    (103, 32, 4, (20, 3)),
    (5, 3, 2, (2, 1)),  # a batch that is not a multiple of the replicas is never used for validation
])
def test_val_batching_gives_every_replica_a_full_batch(n_val, batch_size, replicas, expected):
    batch, left_out = val_batching(n_val, batch_size, replicas)
    assert (batch, left_out) == expected
    assert batch % replicas == 0 or replicas == 1
    assert (n_val - left_out) % batch == 0 or replicas == 1


class FakeResolver:
    def __init__(self, cluster: dict, task_type: str, task_id: int):
        self._cluster, self.task_type, self.task_id = cluster, task_type, task_id

    def cluster_spec(self):
        return type("Spec", (), {"as_dict": lambda _: self._cluster})()


class FakeStrategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


@pytest.mark.parametrize("cluster, task, chief, name, workers", [
    ({}, ("worker", 0), True, "chief", 1),
    ({"worker": ["a:1", "b:2"]}, ("worker", 0), True, "worker0", 2),
    ({"worker": ["a:1", "b:2"]}, ("worker", 1), False, "worker1", 2),
    ({"chief": ["c:1"], "worker": ["a:1", "b:2"]}, ("chief", 0), True, "chief0", 3),
    ({"chief": ["c:1"], "worker": ["a:1", "b:2"]}, ("worker", 0), False, "worker0", 3),
])
def test_worker_roles_and_backup_folders(cluster, task, chief, name, workers):
    strategy = FakeStrategy(FakeResolver(cluster, *task))
    assert worker_role(strategy) == (chief, name)
    assert worker_count(strategy) == workers
    assert backup_name(chief, name) == ("backup" if chief else f"backup-{name}")


def test_settings_digest_covers_what_workers_share():
    fingerprint = {"sha256": "abc"}
    base = TrainConfig(size=64, backbone="small_cnn", mixed_precision="off", records_dir="/data/a")
    digest = settings_digest(base, fingerprint)
    # Each machine may mount the records elsewhere; the data fingerprint stands for their content.
    assert settings_digest(dataclasses.replace(base, records_dir="/mnt/b"), fingerprint) == digest
    assert settings_digest(dataclasses.replace(base, xla=True), fingerprint) == digest
    # A --weights file in the shared workspace, mounted at /mnt/b on one worker and /shared on the other.
    mounted = [dataclasses.replace(base, run_dir=f"{root}/runs/r", weights=f"{root}/start.keras")
               for root in ("/mnt/b", "/shared")]
    assert settings_digest(mounted[0], fingerprint) == settings_digest(mounted[1], fingerprint)
    assert settings_digest(dataclasses.replace(mounted[1], weights="/shared/other.keras"), fingerprint) != (
        settings_digest(mounted[0], fingerprint))
    for changed in ({"lr": 0.5}, {"epochs": 3}, {"batch_size": 16}, {"mixed_precision": "bfloat16"},
                    {"optimizer": "adamw"}, {"optimizer": "sgd", "momentum": 0.9}):
        assert settings_digest(dataclasses.replace(base, **changed), fingerprint) != digest, changed
    assert settings_digest(base, {"sha256": "abd"}) != digest
    assert 0 <= digest < 2 ** 24


# ---------------------------------------------------------------- two workers on loopback ports

def free_ports(count: int) -> list[int]:
    """Ports the OS picked as free (all bound at once, so they differ), released for the workers."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_workers(records: Path, run_dir: Path, temp: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    """tools/train.py as worker 0 (the chief) and worker 1 of a 2-worker cluster; both killed on a timeout."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    args = [sys.executable, str(ROOT / "tools" / "train.py"), "--records", str(records), "--size", "64",
            "--backbone", "small_cnn", "--members", "1", "--epochs", "1", "--batch-size", "8",
            "--run-dir", str(run_dir), "--verbose", "2", "--n-boot", "1000", *extra]
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(temp), "TF_CPP_MIN_LOG_LEVEL": "2"}
        processes.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        logs = [f"--- worker{index} stderr:\n{process.communicate()[1][-3000:]}" for index, process in
                enumerate(processes)]
        pytest.fail(f"workers did not finish in {TIMEOUT_S} s\n" + "\n".join(logs))
    return results


def failure_report(results) -> str:
    return "\n".join(f"--- worker{index} rc={result.returncode}\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
                     for index, result in enumerate(results))


@pytest.mark.slow
def test_two_workers_train_once_and_the_chief_saves_the_run(records, tmp_path):
    from bnp_cxr.training import load_compiled_model
    from bnp_cxr.records.reader import make_dataset

    # One test, not several sharing a module fixture: pytest-xdist would start the cluster once per process.
    run_dir, temp = tmp_path / "run", tmp_path / "tmp"
    temp.mkdir()
    chief, worker = results = run_workers(records, run_dir, temp)
    assert [result.returncode for result in results] == [0, 0], failure_report(results)

    assert [path.relative_to(run_dir) for path in run_dir.rglob("*.keras")] == [Path(MODEL_FILE)]
    assert list(temp.iterdir()) == []  # worker1's model / history folder was removed
    for backup in ("backup", "backup-worker1"):  # each worker resumes from its own
        assert json.loads((run_dir / backup / "training_metadata.json").read_text())["epoch"] == 1
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["hardware"]["strategy"] == "multi_worker"
    assert (saved["hardware"]["workers"], saved["hardware"]["replicas"]) == (2, 2)
    assert saved["sessions"][0]["hardware"]["workers"] == 2
    assert "1 of 1 epochs done; best val loss" in chief.stdout
    assert "the chief writes" in worker.stdout and "[worker1]" in worker.stdout
    assert "leaves out the last 1 val image" in chief.stdout
    # Only the chief evaluates the saved model on the test split.
    assert json.loads((run_dir / "metrics.json").read_text())["split"] == "test"
    assert "test split" in chief.stdout and "test split" not in worker.stdout

    model = load_compiled_model(run_dir / MODEL_FILE)
    prediction = model.predict(np.random.default_rng(0).random((3, 64, 64, 1), "float32"), verbose=0)
    assert prediction.shape == (3, 2) and np.isfinite(prediction).all()
    history = read_history(run_dir / HISTORY_FILE)
    assert [row["epoch"] for row in history] == [0]
    assert all(math.isfinite(value) for value in history[0].values())
    # The sharded validation against the saved model on the 8 validated images in one process. Each worker
    # validated half of every batch and the metrics sum over both; Keras 3 keeps BatchNorm's moving
    # statistics per replica (not all-reduced) and the chief saved its own: close, not equal.
    standardize = json.loads((run_dir / "config.json").read_text())["standardize"]
    val = make_dataset(records, "val", 64, batch_size=4, deterministic=True, standardize=standardize)
    val = val.unbatch().take(8).batch(4)
    scores = model.evaluate(val, verbose=0, return_dict=True)
    for name in ("mae_log10_bnp", "mae_log10_bnpp"):
        assert history[0][f"val_{name}"] == pytest.approx(scores[name], rel=0.05), name
    # MaskedL1 scales each replica's share by 1 / replicas: the logged loss is the mean, not 2 x it.
    assert history[0]["val_loss"] == pytest.approx(scores["loss"], rel=0.05)


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_other(records, tmp_path):
    # The chief's run folder is taken (worker1's own backup folder is free): the chief refuses, and
    # worker1 must exit too rather than wait for it in its first collective.
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("someone else's\n")
    (temp := tmp_path / "tmp").mkdir()
    results = run_workers(records, run_dir, temp)
    assert [result.returncode for result in results] == [2, 2], failure_report(results)
    assert "--resume" in results[0].stderr and "another worker could not start" in results[1].stderr
    assert sorted(path.name for path in run_dir.iterdir()) == ["notes.txt"] and list(temp.iterdir()) == []


# ---------------------------------------------------------------- GPU-path options, on CPU

class Capture(keras.callbacks.Callback):
    """Keeps the model and the first batch's loss."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


@pytest.mark.parametrize("mixed_precision, xla, policy, optimizer", [
    ("off", True, "float32", "Adam"),  # float32 without XLA: tests/test_training.py
    ("bfloat16", False, "mixed_bfloat16", "Adam"),  # bfloat16 keeps float32's range: no loss scaling
    ("on", False, "mixed_float16", "LossScaleOptimizer"),
])
def test_precision_and_xla_train_one_epoch(records, tmp_path, mixed_precision, xla, policy, optimizer):
    from bnp_cxr.models import load_model

    capture = Capture()
    config = make_config({"records_dir": str(records), "size": 64, "backbone": "small_cnn", "members": 1, "epochs": 1,
                          "batch_size": 8, "run_dir": str(tmp_path / "run"), "mixed_precision": mixed_precision,
                          "xla": xla, "augment": False})
    result = train(config, callbacks=[capture], verbose=0, log=lambda _: None)
    assert capture.model.dtype_policy.name == policy and type(capture.model.optimizer).__name__ == optimizer
    assert capture.model.jit_compile is xla
    assert capture.losses and all(math.isfinite(loss) for loss in capture.losses)
    assert math.isfinite(result.history[0]["val_loss"])
    compute = json.loads((result.run_dir / "config.json").read_text())["compute"]
    assert compute == {"dtype_policy": policy, "jit_compile": xla, "optimizer": optimizer}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    outputs = load_model(result.model_path)(np.zeros((2, 64, 64, 1), "float32"))
    assert outputs.dtype == "float32"  # the output layer stays float32 under either policy


def backup_arrays(backup: Path) -> dict[str, np.ndarray]:
    """Every array of a worker's BackupAndRestore weights file, by its path in the file."""
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(backup / "latest.weights.h5", "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                          else None)
    return arrays


def differing_arrays(run_dir: Path) -> list[str]:
    """Paths of the arrays in which the chief's and worker1's end-of-epoch weights differ."""
    chief, worker = backup_arrays(run_dir / "backup"), backup_arrays(run_dir / "backup-worker1")
    assert chief.keys() == worker.keys() and chief
    return [name for name in chief if not np.allclose(chief[name], worker[name], rtol=1e-5, atol=1e-7)]


@pytest.mark.slow
def test_two_workers_with_synchronized_batchnorm_hold_the_same_statistics(records, tmp_path):
    # Per replica (the default) each worker's BatchNorm moving statistics follow its own shards: the chief's
    # and worker1's backups differ there and only there (the trained weights are all-reduced). With
    # --sync-batchnorm both normalise with the global batch's moments and hold identical statistics.
    found = {}
    for sync in (False, True):
        run_dir, temp = tmp_path / f"run{sync}", tmp_path / f"tmp{sync}"
        temp.mkdir()
        chief, _ = results = run_workers(records, run_dir, temp, *(["--sync-batchnorm"] if sync else []))
        assert [result.returncode for result in results] == [0, 0], failure_report(results)
        assert json.loads((run_dir / "config.json").read_text())["sync_batchnorm"] is sync
        assert ("BatchNorm synchronised across replicas in" in chief.stdout) is sync
        found[sync] = differing_arrays(run_dir)
    # BatchNormalization's variables are gamma, beta, moving mean and moving variance (vars/0..3).
    moving = re.compile(r"layers/batch_normalization(_\d+)?/vars/[23]")
    assert found[False] and all(moving.fullmatch(name) for name in found[False]), found[False]
    assert found[True] == []
