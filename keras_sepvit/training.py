"""The paper's training recipe for `model.fit` (Sec. 4.1), resumable and atomic.

AdamW, lr 1e-3 at batch 1024 scaled linearly with the batch, weight decay
0.05 (0.1 for B) except on biases, norms, window tokens and position-encoding
convs, linear warm-up (5 epochs, 20 for B) then cosine decay, label smoothing
0.1, stochastic depth 0.2 / 0.3 / 0.5 (T / S / B), gradient clipping.

Checkpoints: every epoch one folder `checkpoint/` holding `last.keras` (model
+ optimizer, so the schedule continues), `best.weights.h5` (best validation
metric) and `state.json` (epoch, history and the files' SHA-256). It is
written as `checkpoint.tmp/` and renamed into place, so a run killed at any
moment leaves a complete checkpoint; resume verifies the checksums and
refuses a damaged one. A run is never overwritten unless asked, and a
non-finite loss stops training before anything of it is saved.

Distribution, by backend (`distribution_scope` picks it): TensorFlow uses
`MultiWorkerMirroredStrategy` when a cluster is configured (`TF_CONFIG`, or a
SLURM job of several tasks), `MirroredStrategy` on several GPUs, a TPU with
`tpu=`; JAX uses `keras.distribution.DataParallel` over every device of every
process (`initialize_multi_host` joins processes); PyTorch trains on one
device. In a cluster only the chief (TF: task "chief", else worker 0; JAX:
process 0) commits checkpoints; the other workers make the same calls into a
temporary folder that is deleted, so collective reads stay in step.
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
import warnings
import zipfile
from collections import Counter

import keras
import numpy as np

from keras_sepvit.distribution import (  # noqa: F401 (public here too)
    JIT_COMPILE,
    AdamW,
    cluster_resolver,
    default_jit_compile,
    distribution_scope,
    distribution_strategy,
    initialize_multi_host,
    is_chief,
    multi_worker_strategy,
    replicas,
    shard_by,
)
from keras_sepvit.layers import PositionEncoding, WindowTokens

# Sec. 4.1 and the DeiT/PVT recipe it follows; Lite is not in the paper's
# settings: it takes T's, with the small model's lighter stochastic depth.
RECIPES = {
    "lite": {"weight_decay": 0.05, "warmup_epochs": 5, "drop_path_rate": 0.1},
    "tiny": {"weight_decay": 0.05, "warmup_epochs": 5, "drop_path_rate": 0.2},
    "small": {"weight_decay": 0.05, "warmup_epochs": 5, "drop_path_rate": 0.3},
    "base": {"weight_decay": 0.1, "warmup_epochs": 20, "drop_path_rate": 0.5},
}
BASE_LEARNING_RATE = 1e-3
BASE_BATCH_SIZE = 1024


def scaled_learning_rate(batch_size, base_learning_rate=BASE_LEARNING_RATE):
    """The linear scaling rule: `base * batch / 1024`."""
    return base_learning_rate * batch_size / BASE_BATCH_SIZE


def no_weight_decay_variables(model):
    """Biases, norm scales/offsets, window tokens and PEG conv weights."""
    excluded = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, (WindowTokens, PositionEncoding)):
            excluded.extend(layer.trainable_weights)
    excluded.extend(v for v in model.trainable_weights if len(v.shape) <= 1)
    seen, unique = set(), []
    for v in excluded:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique


def warmup_cosine_schedule(
    learning_rate, total_steps, warmup_steps, warmup_from=1e-6, min_learning_rate=1e-5
):
    """Linear warm-up from `warmup_from` to `learning_rate`, then cosine to the minimum.

    A function of `optimizer.iterations`, so a resumed run continues it exactly.
    """
    if total_steps <= warmup_steps:
        raise ValueError(
            "The run must be longer than its warm-up: shorten the warm-up (--warmup-epochs "
            "in the examples) or train longer. Received: "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=min(warmup_from, learning_rate) if warmup_steps else learning_rate,
        decay_steps=total_steps - warmup_steps,
        alpha=min(1.0, min_learning_rate / learning_rate),
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def optimizer_step(optimizer):
    """`optimizer.iterations` as a Python int, on every backend and under tf.distribute."""
    return int(optimizer.iterations.numpy())


def make_optimizer(
    model,
    learning_rate,
    total_steps,
    warmup_steps,
    weight_decay=0.05,
    clipnorm=5.0,
    min_learning_rate=1e-5,
):
    """AdamW with the recipe's schedule, decay exclusions and gradient clipping.

    Inside a TensorFlow strategy of several replicas it is `training.AdamW`,
    which clips the all-reduced gradient (Keras clips each replica's share).
    """
    if learning_rate is None or learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={learning_rate}")
    cls = keras.optimizers.AdamW
    if clipnorm and keras.backend.backend() == "tensorflow" and replicas() > 1:
        cls = AdamW
    optimizer = cls(
        learning_rate=warmup_cosine_schedule(
            learning_rate, total_steps, warmup_steps, min_learning_rate=min_learning_rate
        ),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        global_clipnorm=clipnorm or None,
    )
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


def decayed_variable_paths(model, optimizer):
    """Paths of the variables the optimizer applies weight decay to."""
    return [v.path for v in model.trainable_weights if optimizer._use_weight_decay(v)]


class TrainingError(Exception):
    """A training run that cannot go on as asked; the message says what to do."""


class RunExistsError(TrainingError, FileExistsError):
    """The output folder already holds a run, and neither resume nor overwrite was asked."""


class CheckpointError(TrainingError):
    """A checkpoint that is missing, damaged or does not belong to this run."""


class CheckpointWriteError(TrainingError, OSError):
    """Writing a checkpoint failed (e.g. disk full); the previous one is intact."""


class NonFiniteError(TrainingError, FloatingPointError):
    """The loss (or a weight) became NaN/inf: training stopped before saving it."""


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


def epoch_steps(num_examples, batch_size, steps_per_epoch=None, where=""):
    """Steps per epoch for the training scripts, checked before any training.

    `steps_per_epoch` when given, else the full batches of `num_examples`.
    Raises `TrainingError` naming the flag to change when the size of the
    training split is unknown (None) or smaller than one batch. `where`
    describes the split in the message (e.g. " in 'digits' 'train'").
    """
    if steps_per_epoch is not None:
        return steps_per_epoch
    if num_examples is None:
        raise TrainingError(
            f"the size of the training split{where} is unknown: pass --steps-per-epoch"
        )
    if num_examples < batch_size:
        raise TrainingError(
            f"--batch-size {batch_size} is larger than the training split ({num_examples} "
            f"examples{where}), so an epoch would have no step. Use --batch-size "
            f"{num_examples} or less."
        )
    from keras_sepvit.data import steps_per_epoch as full_batches

    return full_batches(num_examples, batch_size)


def _refuse_existing_run(directory, resume, overwrite):
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
    _refuse_existing_run(directory, resume, overwrite)
    if resume:
        read_state(directory)


def prepare_run(model, directory, resume=False, overwrite=False):
    """Readies `directory` for a compiled `model`; returns the epoch to start from.

    `overwrite` deletes the previous run's checkpoints and logs; `resume`
    restores weights and optimizer state from the verified checkpoint and
    rewrites `log.csv` from its committed history. In a cluster only the
    chief deletes and writes; every worker restores.
    """
    _refuse_existing_run(directory, resume, overwrite)  # `restore` verifies the checkpoint
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


def fit(
    model,
    optimizer,
    train_ds,
    val_ds,
    epochs,
    directory,
    label_smoothing=0.1,
    resume=False,
    jit_compile="auto",
    steps_per_epoch=None,
    validation_steps=None,
    tensorboard=True,
    verbose="auto",
    overwrite=False,
):
    """Compiles with the recipe's loss and runs `model.fit` with checkpoints.

    With `resume=True` it continues from `directory` (weights, optimizer state
    and so the learning-rate schedule, epoch counter, CSV log), after checking
    the checkpoint's checksums. A `directory` that already holds a run is
    refused unless `resume=True` or `overwrite=True` (which deletes that run's
    checkpoints and logs first). Returns `(history, initial_epoch)`.

    In a cluster (TensorFlow multi-worker, JAX multi-host), call it on every
    worker with the same shared `directory`: the chief alone deletes, writes
    and commits; every worker restores from it.

    Raises:
        RunExistsError: `directory` holds a run and neither flag was given.
        CheckpointError: the checkpoint to resume is missing or damaged.
        NonFiniteError: the loss became NaN/inf (nothing of that epoch is saved).
        CheckpointWriteError: a checkpoint could not be written (e.g. disk full).
    """
    _refuse_existing_run(directory, resume, overwrite)  # before compiling
    model.compile(
        optimizer,
        keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    initial_epoch = prepare_run(model, directory, resume, overwrite)
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        callbacks=training_callbacks(directory, tensorboard=tensorboard),
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=verbose,
    )
    return history, initial_epoch
