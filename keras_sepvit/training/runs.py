"""A training run's folder: refuse to clobber it, ready it, resume it, report it.

`check_run` refuses, before any work, an output folder that holds a run
unless resume or overwrite was asked (and verifies the checkpoint to resume);
`prepare_run` clears or restores it for a compiled model; `training_callbacks`
are the atomic checkpoints and TensorBoard logs; `run_summary` is the last
line a script prints.
"""

import os
import warnings

import keras

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


def check_run(directory, resume=False, overwrite=False):
    """Refuses, before any work, to train into a `directory` that holds a run.

    Without `resume` or `overwrite` an existing run is refused; with `resume`
    its checkpoint is verified now (checksums), so a damaged one is refused
    before data or models are built.

    Raises:
        ValueError: both `resume` and `overwrite`.
        RunExistsError: `directory` holds a run and neither flag was given.
        CheckpointError: the checkpoint to resume is damaged.
    """
    refuse_existing_run(directory, resume, overwrite)
    if resume:
        read_state(directory)


def prepare_run(model, directory, resume=False, overwrite=False):
    """Readies `directory` for a compiled `model`; returns the epoch to start from.

    `overwrite` deletes the previous run's checkpoints and logs; `resume`
    restores weights and optimizer state from the verified checkpoint and
    rewrites `log.csv` from its committed history. In a cluster only the
    chief deletes and writes; every worker restores.
    """
    refuse_existing_run(directory, resume, overwrite)  # `restore` verifies the checkpoint
    chief = is_chief()
    if overwrite and chief:
        clear_run(directory)
    if chief:
        os.makedirs(directory, exist_ok=True)
    initial_epoch = restore(model, directory) if resume else 0
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
