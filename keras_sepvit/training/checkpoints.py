"""The atomic checkpoint store of a training run: write, verify, restore.

Every epoch one folder `checkpoint/` holding `last.keras` (model + optimizer,
so the schedule continues), `best.weights.h5` (best validation metric) and
`state.json` (epoch, history and the files' SHA-256). It is written as
`checkpoint.tmp/` and renamed into place (the one before is kept as
`checkpoint.prev/`), so a run killed at any moment leaves a complete
checkpoint; resume verifies the checksums and refuses a damaged one, and
loading is all or nothing. A non-finite loss stops training before anything
of it is saved. `log.csv` is rewritten from the committed history.

In a cluster only the chief (`distribution.is_chief`) commits checkpoints;
the other workers make the same calls into a temporary folder that is
deleted, so collective reads stay in step.
"""

import csv
import errno
import gc
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections import Counter

import keras
import numpy as np

from keras_sepvit.training.distribution import is_chief
from keras_sepvit.training.errors import (
    CheckpointError,
    CheckpointWriteError,
    NonFiniteError,
    TrainingError,
)


def optimizer_step(optimizer):
    """`optimizer.iterations` as a Python int, on every backend and under tf.distribute."""
    return int(optimizer.iterations.numpy())


# The committed checkpoint is one folder; a new one is written beside it and
# renamed into place, the one before it is kept as CHECKPOINT + ".prev".
CHECKPOINT, LAST, BEST, STATE, LOG = (
    "checkpoint", "last.keras", "best.weights.h5", "state.json", "log.csv"
)  # fmt: skip
STATE_FORMAT = 1
_LEGACY = ("last.keras", "state.json", "best.weights.h5")  # flat layout before checksums


def _paths(directory):
    final = os.path.join(directory, CHECKPOINT)
    return final, final + ".prev", final + ".tmp"


def _step(name):
    """Marks a point of the checkpoint write (tests simulate a kill at each)."""


def _discard(path):
    """Removes a half-written checkpoint folder (not called when a process is killed)."""
    shutil.rmtree(path, ignore_errors=True)


def _fsync(path, directory=False):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _seal(payload):
    body = json.dumps(payload, sort_keys=True)
    return {**payload, "checksum": hashlib.sha256(body.encode()).hexdigest()}


def _link_or_copy(source, target):
    try:
        os.link(source, target)  # files are never modified in place, so sharing is safe
    except OSError:
        shutil.copyfile(source, target)


def _write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(folder):
    """Checks a checkpoint folder against the checksums recorded when it was written.

    Returns its state (epoch, iterations, best, logs, history, files). Raises
    `CheckpointError` naming the file when `state.json` is missing, truncated
    or edited, or a file it lists is missing, truncated or corrupt.
    """
    path = os.path.join(folder, STATE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing")
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged (truncated or not JSON: {e})") from e
    if not isinstance(state, dict) or "checksum" not in state:
        raise CheckpointError(f"{path} is not a keras_sepvit checkpoint state (no checksum)")
    payload = {k: v for k, v in state.items() if k != "checksum"}
    if _seal(payload)["checksum"] != state["checksum"]:
        raise CheckpointError(f"{path} is damaged (its checksum does not match its content)")
    for name, record in payload["files"].items():
        file = os.path.join(folder, name)
        if not os.path.exists(file):
            raise CheckpointError(f"{file} is missing")
        size = os.path.getsize(file)
        if size != record["bytes"]:
            raise CheckpointError(
                f"{file} is truncated or damaged: {size} bytes, written as {record['bytes']}"
            )
        if _sha256(file) != record["sha256"]:
            raise CheckpointError(f"{file} is corrupt: its SHA-256 differs from the one recorded")
    return payload


def _committed(directory):
    """The committed checkpoint folder: `checkpoint`, or `checkpoint.prev` when a
    process was killed between the two renames of a commit; None before any."""
    final, prev, _ = _paths(directory)
    if os.path.isdir(final):
        return final
    if os.path.isdir(prev):
        return prev
    return None


def _damaged(directory, folder, error):
    """A CheckpointError for a damaged checkpoint, saying what the user can do."""
    final, prev, _ = _paths(directory)
    hint = ""
    if folder == final and os.path.isdir(prev):
        try:
            state = verify_checkpoint(prev)
            hint = (
                f" The previous checkpoint (epoch {state['epoch'] + 1}) in {prev} is intact: "
                f"to continue from it, move {final} aside (e.g. to {final}.damaged), rename "
                f"{prev} to {final} and resume."
            )
        except CheckpointError:
            pass
    return CheckpointError(
        f"Cannot resume the run in {directory}: {error}.{hint} Nothing was changed. "
        "Restore the file from a backup, or start over with --overwrite (overwrite=True), "
        "which deletes this run, or use another --out."
    )


def read_state(directory):
    """The last committed epoch's verified state, or None when there is no checkpoint.

    Raises `CheckpointError` (naming the file and what to do) when it is damaged.
    """
    folder = _committed(directory)
    if folder is None:
        return None
    try:
        return verify_checkpoint(folder)
    except CheckpointError as e:
        raise _damaged(directory, folder, e) from None


def existing_run(directory):
    """The files of a previous run in `directory` (empty when there is none)."""
    if not os.path.isdir(directory):
        return []
    names = [CHECKPOINT, CHECKPOINT + ".prev", LOG, *_LEGACY]
    return [n for n in names if os.path.exists(os.path.join(directory, n))]


def clear_run(directory):
    """Deletes a run's checkpoints, log and TensorBoard logs (only those) from `directory`."""
    final, prev, tmp = _paths(directory)
    for folder in (tmp, prev, final, os.path.join(directory, "tensorboard")):
        shutil.rmtree(folder, ignore_errors=True)
    for name in (LOG, *_LEGACY):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)


def write_log(directory, history):
    """`log.csv` (one row per committed epoch), rewritten whole and renamed into place."""
    keys = sorted({k for row in history for k in row} - {"epoch"})
    path = os.path.join(directory, LOG)
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", *keys])
        writer.writeheader()
        writer.writerows(history)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _shapes_in(path):
    """{"model": Counter of variable shapes, "optimizer": Counter} stored in a weights file."""
    import h5py

    groups = {"model": Counter(), "optimizer": Counter()}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            group = "optimizer" if name.startswith("optimizer/") else "model"
            groups[group][tuple(item.shape)] += 1

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
                h5.visititems(visit)
    else:
        with h5py.File(path, "r") as h5:
            h5.visititems(visit)
    return groups


def _describe(counter):
    return ", ".join(f"{n} x {shape}" if n > 1 else str(shape) for shape, n in counter.items())


def _check_fits(model, path, with_optimizer):
    """Raises (before anything is assigned) if the file's variables do not fit the model."""
    stored = _shapes_in(path)
    wanted = {"model": Counter(tuple(v.shape) for v in model.weights)}
    if with_optimizer and stored["optimizer"]:
        wanted["optimizer"] = Counter(tuple(v.shape) for v in model.optimizer.variables)
    for group, counter in wanted.items():
        if counter != stored[group]:
            extra, missing = stored[group] - counter, counter - stored[group]
            raise ValueError(
                f"{path} does not fit this model: its {group} has {stored[group].total()} "
                f"variables, the model's {counter.total()}; only in the file: "
                f"[{_describe(extra)[:300]}], only in the model: [{_describe(missing)[:300]}]. "
                "Nothing was loaded: build the model with the checkpoint's settings "
                "(variant, classes, input channels)."
            )


def _load_all_or_nothing(model, path, with_optimizer, check=None):
    """`model.load_weights(path)`; on any failure every variable gets its value back."""
    variables = list(model.weights)
    if with_optimizer:
        variables += list(model.optimizer.variables)
    saved = [v.numpy() for v in variables]
    try:
        model.load_weights(path)
        if check is not None:
            check()
    except BaseException:
        for variable, value in zip(variables, saved):
            variable.assign(value)
        raise


def restore(model, directory):
    """Loads the verified `last.keras` (weights and optimizer state) into a compiled model.

    Every file is checked against its recorded checksum and the variables
    against the model's before anything is assigned; on refusal the model is
    unchanged. Returns the epoch to continue from (0 when there is no
    checkpoint).
    """
    folder = _committed(directory)
    if folder is None:
        leftovers = [n for n in existing_run(directory) if n != CHECKPOINT]
        if leftovers:
            raise CheckpointError(
                f"Cannot resume the run in {directory}: it has {leftovers} but no "
                f"checkpoint folder ({CHECKPOINT}/ with {LAST}, {STATE}; runs written before "
                "checksums were recorded cannot be verified). Nothing was changed. Start over "
                "with --overwrite (overwrite=True), or use another --out."
            )
        return 0
    state = read_state(directory)
    checkpoint = os.path.join(folder, LAST)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    _check_fits(model, checkpoint, with_optimizer=True)

    def same_step():
        if optimizer_step(model.optimizer) != state["iterations"]:
            raise CheckpointError(
                f"{checkpoint} holds optimizer step {optimizer_step(model.optimizer)}, "
                f"{os.path.join(folder, STATE)} says {state['iterations']}: they disagree"
            )

    _load_all_or_nothing(model, checkpoint, True, same_step)
    return state["epoch"] + 1


def load_best(model, directory):
    """Loads the run's verified `best.weights.h5` into `model` (all or nothing).

    Returns the state of the checkpoint it came from (`best`, `best_epoch`).
    """
    state = read_state(directory)
    if state is None or BEST not in state["files"]:
        raise CheckpointError(f"{directory} has no best weights ({CHECKPOINT}/{BEST})")
    path = os.path.join(_committed(directory), BEST)
    _check_fits(model, path, with_optimizer=False)
    _load_all_or_nothing(model, path, False)
    return state


def _all_finite(variables):
    return all(np.isfinite(v.numpy()).all() for v in variables)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Each epoch one checkpoint folder: `last.keras`, `best.weights.h5`, `state.json`.

    The folder is written as `checkpoint.tmp`, its files' SHA-256 recorded in
    `state.json`, then renamed to `checkpoint` (the one before is kept as
    `checkpoint.prev`), so a run killed at any moment leaves a complete,
    verifiable checkpoint. `log.csv` is rewritten from the committed history,
    so it never repeats or skips an epoch. An epoch with a non-finite loss,
    metric or weight, or with no training step, raises instead of saving.

    Args:
        directory: str. Output folder.
        monitor: str. Metric for "best" (e.g. "val_accuracy"); higher is
            better unless `mode="min"`.
        mode: "max" or "min".
        chief: bool or None. Whether this process commits the checkpoints.
            None asks `is_chief()` (True outside a cluster). The other
            workers of a cluster write the same files into a temporary
            folder that is deleted: their calls stay in step with the
            chief's, and `directory` (shared by all) is written once.
    """

    def __init__(self, directory, monitor="val_accuracy", mode="max", chief=None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        self.chief = chief
        if self._chief():
            os.makedirs(directory, exist_ok=True)
        state = read_state(directory)
        self.state = state
        self.best = state.get("best") if state else None
        self._iterations = None

    def _chief(self):
        return is_chief() if self.chief is None else self.chief

    def _better(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _last_good(self):
        if self.state is None:
            return f"No checkpoint was written to {self.directory}."
        return (
            f"The last good checkpoint (epoch {self.state['epoch'] + 1}) is in "
            f"{_committed(self.directory)}."
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._iterations = optimizer_step(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if (
            self._iterations is not None
            and optimizer_step(self.model.optimizer) == self._iterations
        ):
            raise TrainingError(
                f"Epoch {epoch + 1} ran no training step: the training data yields no batch "
                "(fewer examples than the batch size?). Nothing was saved."
            )
        bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
        if bad or not _all_finite(self.model.trainable_weights):
            what = ", ".join(f"{k}={v}" for k, v in bad.items()) or "a weight"
            raise NonFiniteError(
                f"Training stopped: {what} is not finite in epoch {epoch + 1}; nothing was saved "
                f"for this epoch. {self._last_good()} The learning rate is probably too high "
                f"(now {float(self.model.optimizer.learning_rate):.3g}): lower it (--lr) and "
                "resume (--resume), or start over (--overwrite)."
            )
        value = logs.get(self.monitor)
        self.commit(epoch, logs, value is not None and self._better(value))

    def commit(self, epoch, logs, improved):
        """Writes and commits the checkpoint of `epoch` (0-based).

        On a worker that is not the chief, the same files are written to a
        temporary folder, which is then deleted.
        """
        if self._chief():
            return self._commit(self.directory, epoch, logs, improved)
        scratch = tempfile.mkdtemp(prefix="keras_sepvit_worker_")
        try:
            self._commit(scratch, epoch, logs, improved, shared_best=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _commit(self, directory, epoch, logs, improved, shared_best=True):
        final, prev, tmp = _paths(directory)
        committed = _committed(directory)
        history = [r for r in (self.state or {}).get("history", []) if r["epoch"] < epoch]
        history.append({"epoch": epoch, **logs})
        best, best_epoch = self.best, (self.state or {}).get("best_epoch")
        if improved:
            best, best_epoch = logs[self.monitor], epoch
        _discard(tmp)  # a folder left by a killed process is never the committed one
        try:
            os.makedirs(tmp)
            _step("mkdir")
            if improved:
                self.model.save_weights(os.path.join(tmp, BEST))
            elif shared_best and committed and self.state and BEST in self.state["files"]:
                _link_or_copy(os.path.join(committed, BEST), os.path.join(tmp, BEST))
            _step("best")
            self.model.save(os.path.join(tmp, LAST))
            _step("last")
            files = {}
            for name in sorted(os.listdir(tmp)):
                path = os.path.join(tmp, name)
                _fsync(path)
                files[name] = {"sha256": _sha256(path), "bytes": os.path.getsize(path)}
            state = {
                "format": STATE_FORMAT,
                "epoch": epoch,
                "iterations": optimizer_step(self.model.optimizer),
                "monitor": self.monitor,
                "mode": self.mode,
                "best": best,
                "best_epoch": best_epoch,
                "logs": logs,
                "history": history,
                "files": files,
            }
            _write_json(os.path.join(tmp, STATE), _seal(state))
            _fsync(tmp, directory=True)
            _step("state")
            if os.path.isdir(final):
                _step("rotate")
                shutil.rmtree(prev, ignore_errors=True)
                os.replace(final, prev)
                _step("demote")
            os.replace(tmp, final)
            _fsync(directory, directory=True)
        except OSError as e:
            _discard(tmp)
            gc.collect()  # closes what the failed writer left open while the files still exist
            full = " The disk is full: free some space." if e.errno == errno.ENOSPC else ""
            raise CheckpointWriteError(
                e.errno,
                f"Could not write the checkpoint of epoch {epoch + 1} in {self.directory}: "
                f"{e}.{full} {self._last_good()} Fix the cause and resume (--resume).",
            ) from e
        except BaseException:
            _discard(tmp)
            raise
        _step("commit")
        self.state, self.best = state, best
        write_log(directory, history)
        _step("log")
