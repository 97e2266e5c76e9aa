"""Ensembles: `members` independently seeded runs averaged into one model (TrainConfig.members > 1).

Averaging the predictions of networks trained from different random initialisations is the simplest
ensemble and a strong one (Lakshminarayanan et al., "Simple and Scalable Predictive Uncertainty Estimation
using Deep Ensembles", NeurIPS 2017); on a thousand NIH radiographs the mean of five small CNNs scored above
20 of its 25 members over 5 folds (bench/nih_recipe.py). Member k trains as an ordinary run with seed `seed + k` into
members/member{k}/ (resumable each, so an interrupted ensemble continues where it stopped); when every
member has finished, the parent folder gets model.keras = models.ensemble_model(members) (one flat model
whose output is the members' mean, read by evaluation, prediction and attribution like any other) and a
config.json naming its members.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.training.cluster import Cluster
from bnp_cxr.training.config import CONFIG_FILE, TrainConfig
from bnp_cxr.workspace import RunDir


def member_config(config: TrainConfig, index: int) -> TrainConfig:
    """The config of member `index`: one model, seed + index, in the parent's members/member{index}/."""
    return dataclasses.replace(config, members=1, seed=config.seed + index,
                               run_dir=str(RunDir(config.run_path).member(index).path))


def _write_config(config: TrainConfig, member_runs: list[str], data: dict, sessions: list[dict]) -> None:
    """The parent's config.json: options, member folders (relative), the data fingerprint, sessions."""
    from bnp_cxr.training.loop import library_versions, saved_options

    write_json(Path(config.run_dir) / CONFIG_FILE,
               {**saved_options(config), "versions": library_versions(), "member_runs": member_runs, "data": data,
                "sessions": sessions})


def train_ensemble(config: TrainConfig, cluster: Cluster, notes: list[str], *, callbacks: Sequence = (),
                   verbose: int | str = 1, log: Callable[[str], None] = print):
    """Train (or resume) every member of a resolved config with members > 1, then save the averaged model."""
    from bnp_cxr.models import ensemble_model, load_model
    from bnp_cxr.training.inputs import check_val_split
    from bnp_cxr.training.loop import TrainResult, check_run_dir, data_fingerprint, session_record, train
    from bnp_cxr.training.pretrain import ensure_encoder

    run_dir = Path(config.run_dir)
    # The parent's own check (a folder in use, changed settings or data on --resume); members check theirs.
    data = data_fingerprint(config.records_dir, config.size)
    check_val_split(config, data)  # before the pretraining, which every member would then wait for in vain
    if cluster.chief:
        saved = check_run_dir(config, data, chief=True, backup=cluster.backup)
        sessions = [*(saved or {}).get("sessions", []), session_record(config)]
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(config, [], data, sessions)
    for note in notes:
        log(note if cluster.chief else f"[{cluster.worker}] {note}")
    ensure_encoder(config, data, workers=cluster.n_workers, log=log)  # one encoder for every member
    results = []
    for index in range(config.members):
        member = member_config(config, index)
        if cluster.chief:
            log(f"Ensemble member {index + 1} of {config.members} (seed {member.seed}): {member.run_dir}")
        results.append(train(member, callbacks=callbacks, verbose=verbose, log=log, cluster=cluster))
    done = min(result.epochs_completed for result in results)
    if cluster.chief and done >= config.epochs:
        model = ensemble_model([load_model(result.model_path) for result in results])
        with atomic_path(run_dir / RunDir.MODEL, suffix=".keras") as temp:
            model.save(temp)
        _write_config(config, [str(result.run_dir.relative_to(run_dir)) for result in results], data, sessions)
        log(f"Ensemble of {config.members} members saved: {run_dir / RunDir.MODEL}")
    # No history or best val loss of its own: each member's are in its folder.
    return TrainResult(run_dir=run_dir, model_path=run_dir / RunDir.MODEL, config=config, epochs_completed=done,
                       history=[], best_val_loss=None, notes=notes, chief=cluster.chief)
