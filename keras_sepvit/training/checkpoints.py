"""The atomic checkpoint store of a training run: write, verify, restore.

Every epoch one folder `checkpoint/` holding `last.keras` (model + optimizer,
so the schedule continues), `best.weights.h5` (best validation metric) and
`state.json` (epoch, history and the files' SHA-256). It is written as
`checkpoint.tmp/` and renamed into place (the one before is kept as
`checkpoint.prev/`, a second copy: no file is shared between the two), so a
run killed at any moment leaves a complete checkpoint. Resume verifies the
checksums (and the form of `state.json`); when `checkpoint/` is damaged and
`checkpoint.prev/` verifies, it continues from the previous one, saying so,
and the damaged folder is kept as `checkpoint.damaged/` at the next commit;
it refuses only when no checkpoint verifies. Loading is all or nothing. A
non-finite loss stops training before anything of it is saved; a failed
write (a full disk) closes the files it left open and keeps the last
checkpoint. `log.csv` is rewritten from the committed history.

In a cluster only the chief (`distribution.is_chief`) commits checkpoints;
the other workers make the same calls into a temporary folder that is
deleted, so collective reads stay in step.
"""

import csv
import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections import Counter

import h5py
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
# renamed into place, the one before it is kept as CHECKPOINT + ".prev" (and a
# damaged newest one, once training went on from the previous, as DAMAGED).
CHECKPOINT, LAST, BEST, STATE, LOG = (
    "checkpoint", "last.keras", "best.weights.h5", "state.json", "log.csv"
)  # fmt: skip
DAMAGED = CHECKPOINT + ".damaged"
STATE_FORMAT = 1
_LEGACY = ("last.keras", "state.json", "best.weights.h5")  # flat layout before checksums
_SAID = set()  # the fallback notes printed by this process (each is printed once)


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


def _copy_verified(sources, target, record):
    """Copies the first of `sources` whose SHA-256 is `record`'s to `target`.

    A real copy, never a hard link: a byte changed in place in one checkpoint
    must not damage the other. A source that rotted since it was committed is
    skipped, so a damaged file never gets a fresh checksum in a new checkpoint.
    """
    for source in sources:
        if os.path.exists(source):
            shutil.copyfile(source, target)
            if _sha256(target) == record["sha256"]:
                return
    raise CheckpointError(
        f"{sources[0]} is corrupt (its SHA-256 differs from the one recorded when it was "
        "written) and no checkpoint holds an intact copy, so it cannot be carried into the "
        f"next checkpoint. Nothing was saved for this epoch. Restore {BEST} from a backup, "
        "or start over with --overwrite (overwrite=True)."
    )


def _close_h5_files_in(folder):
    """Closes the HDF5 files in `folder` that a failed write left open.

    Keras does not close a `.weights.h5` whose write failed (e.g. disk full),
    and the error's traceback keeps it alive. Freed at exit, it is flushed to
    the full disk (of a folder already deleted): "Exception ignored in
    h5py ObjectID.__dealloc__", then a segmentation fault (exit status 139)
    instead of exit status 1. Closed here, its flush error is caught, its
    file descriptor released, and nothing is left to flush later.
    """
    folder = os.path.abspath(folder) + os.sep
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        if folder not in file_id.name.decode(errors="replace"):  # a path or a file object's repr
            continue
        try:
            h5py.File(file_id).close()
        except Exception:  # its last flush fails on a full disk; the file is discarded
            pass


def _write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_record(record):
    return (
        isinstance(record, dict)
        and isinstance(record.get("sha256"), str)
        and len(record["sha256"]) == 64
        and _is_int(record.get("bytes"))
        and record["bytes"] >= 0
    )


# The keys of state.json: (what the value must be, the check).
_STATE_KEYS = {
    "checksum": ("a SHA-256 hex string", lambda v: isinstance(v, str) and len(v) == 64),
    "format": (f"{STATE_FORMAT} (the format this version reads)", lambda v: v == STATE_FORMAT),
    "epoch": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "iterations": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "monitor": ("a metric name (string)", lambda v: isinstance(v, str)),
    "mode": ('"max" or "min"', lambda v: v in ("max", "min")),
    "best": ("a number or null", lambda v: v is None or _is_number(v)),
    "best_epoch": ("an integer >= 0 or null", lambda v: v is None or (_is_int(v) and v >= 0)),
    "logs": (
        "an object of metric names to numbers",
        lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
    ),
    "history": (
        'a list of objects with an integer "epoch"',
        lambda v: (
            isinstance(v, list) and all(isinstance(r, dict) and _is_int(r.get("epoch")) for r in v)
        ),
    ),
    "files": (
        f'an object naming {LAST} (and {BEST}), each with "sha256" and "bytes"',
        lambda v: (
            isinstance(v, dict)
            and LAST in v
            and set(v) <= {LAST, BEST}
            and all(_is_record(r) for r in v.values())
        ),
    ),
}


def _check_state(path, state):
    """Raises `CheckpointError` naming the key of `state` that is missing or malformed."""
    if not isinstance(state, dict) or "checksum" not in state:
        raise CheckpointError(f"{path} is not a keras_sepvit checkpoint state (no checksum)")
    for key, (wanted, check) in _STATE_KEYS.items():
        if key not in state:
            problem = f'key "{key}" is missing'
        elif not check(state[key]):
            problem = f'key "{key}" must be {wanted}. Received: {key}={state[key]!r:.200}'
        else:
            continue
        raise CheckpointError(
            f"{path} is malformed: {problem} (state.json is written by training; it cannot be "
            "edited by hand)"
        )
    if state["best_epoch"] is not None and BEST not in state["files"]:
        raise CheckpointError(
            f'{path} is malformed: key "files" lists no {BEST}, although best_epoch is '
            f"{state['best_epoch']}"
        )


def verify_checkpoint(folder):
    """Checks a checkpoint folder against the checksums recorded when it was written.

    Returns its state (epoch, iterations, best, logs, history, files). Raises
    `CheckpointError` naming the file when `state.json` is missing, truncated,
    not JSON, malformed (naming the key: missing, of the wrong type, `files`
    empty) or edited, or a file it lists is missing, truncated or corrupt.
    """
    path = os.path.join(folder, STATE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing")
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged (truncated or not JSON: {e})") from e
    _check_state(path, state)
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


def _damaged(directory, error, previous_error=None):
    """A CheckpointError for a run whose checkpoints are damaged, saying what to do."""
    hint = f" The previous checkpoint is damaged too: {previous_error}." if previous_error else ""
    return CheckpointError(
        f"Cannot resume the run in {directory}: {error}.{hint} Nothing was changed. "
        "Restore the file from a backup, or start over with --overwrite (overwrite=True), "
        "which deletes this run, or use another --out."
    )


def _say_once(note):
    if note not in _SAID:
        _SAID.add(note)
        print(note, flush=True)


def _verified(directory):
    """(folder, verified state) of the checkpoint to continue from; (None, None) before any.

    `checkpoint/` when it verifies. When it is damaged and `checkpoint.prev/`
    verifies, the previous one, said once in a printed line that names both
    (the damaged folder is kept as `checkpoint.damaged/` at the next commit).
    Raises `CheckpointError` (naming the file and what to do) when none verifies.
    """
    folder = _committed(directory)
    if folder is None:
        return None, None
    try:
        return folder, verify_checkpoint(folder)
    except CheckpointError as e:
        error = e
    final, prev, _ = _paths(directory)
    if folder != final or not os.path.isdir(prev):
        raise _damaged(directory, error) from None
    try:
        state = verify_checkpoint(prev)
    except CheckpointError as e:
        raise _damaged(directory, error, e) from None
    _say_once(
        f"The newest checkpoint, {final}, is damaged: {error}. Continuing from the previous "
        f"checkpoint, {prev} (epoch {state['epoch'] + 1}); the damaged one is kept as "
        f"{os.path.join(directory, DAMAGED)} once the next epoch is committed."
    )
    return prev, state


def read_state(directory):
    """The last committed epoch's verified state, or None when there is no checkpoint.

    When the newest checkpoint is damaged and the previous one verifies, the
    previous one's state, saying so. Raises `CheckpointError` (naming the file
    and what to do) when no checkpoint verifies.
    """
    return _verified(directory)[1]


def existing_run(directory):
    """The files of a previous run in `directory` (empty when there is none)."""
    if not os.path.isdir(directory):
        return []
    names = [CHECKPOINT, CHECKPOINT + ".prev", DAMAGED, LOG, *_LEGACY]
    return [n for n in names if os.path.exists(os.path.join(directory, n))]


def clear_run(directory):
    """Deletes a run's checkpoints, log and TensorBoard logs (only those) from `directory`."""
    final, prev, tmp = _paths(directory)
    damaged, tensorboard = os.path.join(directory, DAMAGED), os.path.join(directory, "tensorboard")
    for folder in (tmp, prev, final, damaged, tensorboard):
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
    unchanged. A damaged newest checkpoint gives way to the previous one when
    that verifies (said in a printed line). Returns the epoch to continue from
    (0 when there is no checkpoint).
    """
    folder, state = _verified(directory)
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
    folder, state = _verified(directory)
    if state is None or BEST not in state["files"]:
        raise CheckpointError(f"{directory} has no best weights ({CHECKPOINT}/{BEST})")
    path = os.path.join(folder, BEST)
    _check_fits(model, path, with_optimizer=False)
    _load_all_or_nothing(model, path, False)
    return state


def _all_finite(variables):
    return all(np.isfinite(v.numpy()).all() for v in variables)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Each epoch one checkpoint folder: `last.keras`, `best.weights.h5`, `state.json`.

    The folder is written as `checkpoint.tmp`, its files' SHA-256 recorded in
    `state.json`, then renamed to `checkpoint` (the one before is kept as
    `checkpoint.prev`, a copy that shares no file with it), so a run killed
    at any moment leaves a complete, verifiable checkpoint. A run that went on
    from `checkpoint.prev` because `checkpoint` was damaged keeps the damaged
    folder as `checkpoint.damaged` (and `checkpoint.prev` as it is).
    `log.csv` is rewritten from the committed history, so it never repeats or
    skips an epoch. An epoch with a non-finite loss, metric or weight, or with
    no training step, raises instead of saving.

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
        # The verified checkpoint this run goes on from (`checkpoint.prev` when
        # `checkpoint` is damaged), and its state.
        self._folder, self.state = _verified(directory)
        self.best = self.state.get("best") if self.state else None
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
        return f"The last good checkpoint (epoch {self.state['epoch'] + 1}) is in {self._folder}."

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
        # The checkpoint this one follows, verified: `checkpoint.prev` (kept) when training
        # went on from it because `checkpoint` is damaged.
        source = self._folder if shared_best else None
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
            elif source and self.state and BEST in self.state["files"]:
                sources = [os.path.join(f, BEST) for f in dict.fromkeys([source, prev])]
                _copy_verified(sources, os.path.join(tmp, BEST), self.state["files"][BEST])
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
                if source == prev:  # `final` is damaged: set it aside, keep the verified one
                    damaged = os.path.join(directory, DAMAGED)
                    shutil.rmtree(damaged, ignore_errors=True)
                    os.replace(final, damaged)
                else:
                    shutil.rmtree(prev, ignore_errors=True)
                    os.replace(final, prev)
                _step("demote")
            os.replace(tmp, final)
            _fsync(directory, directory=True)
        except OSError as e:
            _close_h5_files_in(tmp)  # before the files go: a failed writer leaves one open
            _discard(tmp)
            full = " The disk is full: free some space." if e.errno == errno.ENOSPC else ""
            detail = " ".join(str(e).split())  # HDF5's messages hold line breaks
            raise CheckpointWriteError(
                e.errno,
                f"Could not write the checkpoint of epoch {epoch + 1} in {self.directory}: "
                f"{detail}.{full} {self._last_good()} Fix the cause and resume (--resume).",
            ) from e
        except BaseException:
            _close_h5_files_in(tmp)
            _discard(tmp)
            raise
        _step("commit")
        self.state, self.best = state, best
        self._folder = _paths(self.directory)[0]  # (a worker's own commit was a scratch copy)
        write_log(directory, history)
        _step("log")
