"""A training run's folder: refuse to clobber it, ready it, resume it, report it.

`check_run` refuses, before any work, an output folder that another process
holds (`locks`), or that holds a run unless resume or overwrite was asked
(and verifies the checkpoint to resume, and compares the settings of a
resume with the run's: `settings`); `check_script_run` is the same for a
script's parsed flags. `prepare_run` clears or restores the folder for a
compiled model and stores the settings; `training_callbacks` are the atomic
checkpoints and TensorBoard logs; `run_summary` is the last line a script
prints.

The chief holds the folder's lock from `check_run` (or `prepare_run`) until
`release_run` or the end of the process; `run_lock` (what `fit` uses) holds
it for a block only.
"""

import argparse
import contextlib
import json
import os
import warnings

import keras

from keras_sepvit.optimizer_build import build_optimizer
from keras_sepvit.training import locks
from keras_sepvit.training.checkpoints import (
    BEST,
    CHECKPOINT,
    LAST,
    LOG,
    STATE,
    AtomicCheckpoint,
    clear_run,
    existing_run,
    read_state,
    restore,
    write_log,
)
from keras_sepvit.training.distribution import is_chief
from keras_sepvit.training.errors import RunExistsError
from keras_sepvit.training.settings import (
    check_settings,
    clear_settings,
    log_changes,
    run_settings,
    write_settings,
)


def _tensorboard_available():
    try:
        import tensorboard.summary.v2  # noqa: F401
    except ImportError:
        return False
    return True


def training_callbacks(directory, monitor="val_accuracy", tensorboard=True):
    """Atomic checkpoints (which also write `log.csv`) and TensorBoard logs.

    Without the `tensorboard` package, TensorBoard logs are skipped with a
    warning instead of failing after the first epoch.
    """
    callbacks = [AtomicCheckpoint(directory, monitor=monitor)]
    if tensorboard and not _tensorboard_available():
        warnings.warn(
            "TensorBoard logs are skipped: the `tensorboard` package is not installed "
            "(`pip install tensorboard`, or keras-sepvit[train]).",
            stacklevel=2,
        )
    elif tensorboard and is_chief():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(directory, "tensorboard")))
    return callbacks


def refuse_existing_run(directory, resume, overwrite):
    """RunExistsError when `directory` holds a run and neither flag was given
    (ValueError for both flags)."""
    if resume and overwrite:
        raise ValueError("Pass `resume=True` or `overwrite=True`, not both.")
    found = existing_run(directory)
    if found and not (resume or overwrite):
        raise RunExistsError(
            f"{directory} already holds a training run ({', '.join(found)}). Continue it with "
            "--resume (resume=True), or start over with --overwrite (overwrite=True), which "
            "deletes its checkpoints and log; or choose another --out."
        )


def _as_settings(settings):
    """A script's namespace as its settings (`run_settings`); a dict as JSON values."""
    if settings is None:
        return None
    if isinstance(settings, argparse.Namespace):
        return run_settings(settings)
    return json.loads(json.dumps(dict(settings), default=str))


def check_run(directory, resume=False, overwrite=False, settings=None,
              allow_changed_settings=False):  # fmt: skip
    """Refuses, before any work, to train into a `directory` that holds a run.

    The chief takes the folder's lock first (`locks`: another live process
    holding it is refused) and keeps it until `release_run` or the end of the
    process. Without `resume` or `overwrite` an existing run is refused; with
    `resume` its checkpoint is verified now (checksums), so a damaged one is
    refused before data or models are built, and `settings` (a dict of JSON
    values, or a script's `argparse.Namespace`: `settings.run_settings`) are
    compared with the run's stored ones: a difference is refused, naming each,
    unless `allow_changed_settings`. `prepare_run` stores them.

    Raises:
        ValueError: both `resume` and `overwrite`.
        RunLockedError: another live process holds `directory`.
        RunExistsError: `directory` holds a run and neither flag was given.
        CheckpointError: the checkpoint to resume is damaged.
        SettingsChangedError: a resume with other settings, not allowed.
    """
    if resume and overwrite:
        raise ValueError("Pass `resume=True` or `overwrite=True`, not both.")
    settings = _as_settings(settings)
    chief = is_chief()
    taken = chief and locks.hold(directory)
    try:
        refuse_existing_run(directory, resume, overwrite)
        changes = []
        if resume:
            read_state(directory)
            if settings is not None and existing_run(directory):
                changes = check_settings(directory, settings, allow_changed_settings, not chief)
    except BaseException:
        if taken:
            locks.release(directory)
        raise
    if chief and settings is not None:  # stored by `prepare_run` when the run starts
        locks.held_lock(directory).pending_settings = (settings, changes)


def check_script_run(args, directory=None, ignore=()):
    """`check_run` for a script's parsed flags: `--out` (or `directory`, the run folder
    inside it), `--resume`, `--overwrite`, `--allow-changed-settings`, and as the run's
    settings every other flag but `settings.NOT_SETTINGS` and the names in `ignore`."""
    check_run(
        args.out if directory is None else directory,
        args.resume,
        args.overwrite,
        run_settings(args, ignore),
        getattr(args, "allow_changed_settings", False),
    )


def release_run(directory):
    """Releases the lock of `directory` that `check_run`/`prepare_run` took (no-op
    when this process holds none); it is released at exit otherwise."""
    locks.release(directory)


@contextlib.contextmanager
def run_lock(directory):
    """Holds the lock of `directory` (chief only) in the block; released at its end,
    also on an error or Ctrl-C, unless it was held before the block."""
    with locks.held(directory, take=is_chief()):
        yield


def prepare_run(model, directory, resume=False, overwrite=False, settings=None,
                allow_changed_settings=False):  # fmt: skip
    """Readies `directory` for a compiled `model`; returns the epoch to start from.

    The chief takes the folder's lock (unless `check_run` did; kept until
    `release_run` or exit). `overwrite` deletes the previous run's
    checkpoints, logs and settings; `resume` restores weights and optimizer
    state from the verified checkpoint (otherwise the optimizer is built here,
    `keras_sepvit.optimizer_build`) and rewrites `log.csv` from its
    committed history. The run's `settings` (or those `check_run` checked)
    are stored in `settings.json`, and changes allowed on a resume are
    appended to `settings.log`. In a cluster only the chief deletes and
    writes; every worker restores.
    """
    chief = is_chief()
    taken = chief and locks.hold(directory)
    try:
        initial_epoch = _prepare(
            model, directory, resume, overwrite, settings, allow_changed_settings, chief
        )
    except BaseException:
        if taken:
            release_run(directory)
        raise
    build_optimizer(model)  # before fit traces the train step: one trace, not two
    return initial_epoch


def _prepare(model, directory, resume, overwrite, settings, allow_changed_settings, chief):
    refuse_existing_run(directory, resume, overwrite)  # `restore` verifies the checkpoint
    settings = _as_settings(settings)
    lock = locks.held_lock(directory)
    pending, changes = None, []
    if lock is not None:
        pending, lock.pending_settings = lock.pending_settings, None
    if settings is not None and resume and existing_run(directory):
        changes = check_settings(directory, settings, allow_changed_settings, not chief)
    elif settings is None and pending is not None:
        settings, changes = pending
    if overwrite and chief:
        clear_run(directory)
        clear_settings(directory)
    if chief:
        os.makedirs(directory, exist_ok=True)
    initial_epoch = restore(model, directory) if resume else 0
    if chief and settings is not None:
        if changes:
            log_changes(directory, changes)
        write_settings(directory, settings)
    if initial_epoch and chief:
        write_log(directory, read_state(directory)["history"])
        print(f"Resuming at epoch {initial_epoch + 1} from {directory}")
    return initial_epoch


def run_summary(state, directory, epochs, also=()):
    """One line on a committed run: `state` (`read_state(directory)`; None
    gives None), its epoch, the monitored metric (and the metrics named in
    `also`), the best value and where the files are."""
    if state is None:
        return None
    monitor = state["monitor"]
    best = "none yet" if state["best"] is None else f"{state['best']:.4f}"
    if state["best_epoch"] is not None:
        best += f" (epoch {state['best_epoch'] + 1})"
    values = ", ".join(
        f"{name} {state['logs'].get(name, float('nan')):.4f}" for name in (monitor, *also)
    )
    return (
        f"Done: epoch {state['epoch'] + 1}/{epochs}, {values}, best {monitor} {best}. "
        f"Checkpoint: {os.path.join(directory, CHECKPOINT)} ({LAST}, {BEST}, {STATE}); "
        f"log: {os.path.join(directory, LOG)}"
    )
