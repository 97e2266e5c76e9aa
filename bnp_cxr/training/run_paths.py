"""A run's paths relative to its run folder: a workspace moved whole, or mounted at another path on another
machine, is the same run (resume, multi-worker agreement, benchmark reuse)."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from bnp_cxr.training.config import TrainConfig

PATH_FIELDS = ("records_dir", "weights", "pretrain_extra")  # the options that name files or folders (a tuple: extra)
NOT_PATHS = (None, "imagenet")  # values of weights that name no file


def _changed_paths(values: Mapping[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """{name: change(path)} for every path of PATH_FIELDS in values (each of a tuple's or a JSON list's)."""
    changes = {}
    for name in PATH_FIELDS:
        value = values.get(name)
        if isinstance(value, (tuple, list)):
            changes[name] = type(value)(change(path) for path in value)
        elif value not in NOT_PATHS:
            changes[name] = change(value)
    return changes


def _map_paths(config: TrainConfig, change: Callable[[str], str], **more) -> TrainConfig:
    """The config with change() applied to every path of PATH_FIELDS (each of a tuple's)."""
    changes = _changed_paths({name: getattr(config, name) for name in PATH_FIELDS}, change)
    return dataclasses.replace(config, **changes, **more)


def run_relative(config: TrainConfig) -> TrainConfig:
    """The config with its paths relative to its run folder, and that folder ".".

    Written lexically, nothing on disk is read: a workspace moved whole, or mounted at another path on another
    machine, gives the same config, so a run there resumes (and a benchmark reuses it) as the same run.
    """
    run = os.path.abspath(config.run_path)
    return _map_paths(config, lambda path: os.path.relpath(os.path.abspath(path), run), run_dir=".")


def _mover(saved_run: str | os.PathLike, run_path: str | os.PathLike) -> Callable[[str], str] | None:
    """path -> the same path moved with the run folder where that exists, else as saved; None: not moved."""
    old_run, new_run = os.path.abspath(saved_run), os.path.abspath(run_path)
    if old_run == new_run:
        return None

    def moved(path: str) -> str:
        candidate = os.path.normpath(os.path.join(new_run, os.path.relpath(os.path.abspath(path), old_run)))
        return candidate if os.path.exists(candidate) else path

    return moved


def rebased(saved: TrainConfig, run_path: str | os.PathLike) -> TrainConfig:
    """A saved config's paths for its run folder now at run_path: each path moved with the folder where it exists
    there (the workspace was moved or copied whole, e.g. to another server), else as saved."""
    moved = _mover(saved.run_path, run_path)
    return saved if moved is None else _map_paths(saved, moved)


def rebased_json(values: dict[str, Any], run_path: str | os.PathLike) -> dict[str, Any]:
    """A run's config.json values with their paths rebased as rebased() does (as saved when it names no run_dir)."""
    moved = _mover(values["run_dir"], run_path) if values.get("run_dir") else None
    return values if moved is None else {**values, **_changed_paths(values, moved)}
