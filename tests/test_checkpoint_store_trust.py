"""The checkpoint store keeps its promises under damage (issue 17, items 1, 5 and 10).

- `checkpoint.prev/` is a second copy: a byte changed in place in one
  checkpoint leaves the other verifiable, and `--resume` (`read_state`,
  `restore`, the next commit) goes on from the previous one, saying so.
- A full disk during a checkpoint write ends the process with exit status 1
  and one line, not a segmentation fault at exit.
- A malformed `state.json` is a `CheckpointError` naming the key or file.

Tiny models, a few steps, tmp folders (`tests/test_training_trust.py` has the rest).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_training_trust import _compiled  # one tiny compiled SepViT-Lite

import keras_sepvit
from keras_sepvit import training
from keras_sepvit.training import checkpoints

LOGS = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.2, "val_accuracy": 0.6}
FILES = ("best.weights.h5", "last.keras", "state.json")


@pytest.fixture(scope="module")
def model():
    return _compiled()


@pytest.fixture(scope="module")
def other():
    """A second model of the same architecture, to restore into."""
    return _compiled()


def _epoch(model, directory, epoch, val_accuracy, callback=None):
    """What `fit` does around one epoch: 3 optimizer steps, then the checkpoint callback."""
    callback = callback or training.AtomicCheckpoint(directory)
    callback.set_model(model)
    callback.on_epoch_begin(epoch)
    model.optimizer.iterations.assign_add(3)
    callback.on_epoch_end(epoch, {**LOGS, "val_accuracy": val_accuracy})
    return callback


def _flip_byte(path):
    """One byte changed in place (bit rot, a stray writer): same inode, same size."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _weights(model):
    return [v.numpy().copy() for v in model.weights + model.optimizer.variables]


def _same(a, b):
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def two_epochs(model, tmp_path_factory):
    """Epochs 0 and 1 committed; epoch 1 did not improve, so its best weights are
    epoch 0's (the file that was hard-linked between the two checkpoints)."""
    directory = str(tmp_path_factory.mktemp("run") / "out")
    model.optimizer.iterations.assign(0)
    _epoch(model, directory, 0, 0.6)
    _epoch(model, directory, 1, 0.4)
    return directory


def _copy_run(source, tmp_path):
    directory = str(tmp_path / "out")
    shutil.copytree(source, directory)
    return directory


# --- 1. checkpoint.prev is a second copy, and resume goes on from it ----------------------


def test_checkpoints_share_no_file(two_epochs):
    final = os.path.join(two_epochs, "checkpoint")
    for name in FILES:
        path = os.path.join(final, name)
        assert not os.path.samefile(path, os.path.join(two_epochs, "checkpoint.prev", name))
        assert os.stat(path).st_nlink == 1


@pytest.mark.parametrize("name", ["best.weights.h5", "last.keras"])
def test_damaged_newest_checkpoint_resumes_from_the_previous(name, two_epochs, model, other,
                                                             tmp_path, capsys):  # fmt: skip
    directory = _copy_run(two_epochs, tmp_path)
    final, prev = os.path.join(directory, "checkpoint"), os.path.join(directory, "checkpoint.prev")
    _flip_byte(os.path.join(final, name))
    with pytest.raises(training.CheckpointError, match=f"{name} is corrupt"):
        training.verify_checkpoint(final)
    assert training.verify_checkpoint(prev)["epoch"] == 0  # (a) the previous one is intact

    # (b) resume goes on from it, saying which checkpoint is damaged and which is used
    assert training.read_state(directory)["epoch"] == 0  # what check_run verifies
    other.optimizer.iterations.assign(0)
    assert training.restore(other, directory) == 1
    assert int(other.optimizer.iterations) == 3
    said = capsys.readouterr().out
    assert f"{final}, is damaged: {os.path.join(final, name)} is corrupt" in said
    assert f"Continuing from the previous checkpoint, {prev} (epoch 1)" in said
    assert said.count("is damaged") == 1  # once, however often the run set-up reads it

    # The next commit keeps the verified checkpoint and sets the damaged one aside.
    _epoch(other, directory, 1, 0.4)
    assert sorted(os.listdir(directory)) == [
        "checkpoint", "checkpoint.damaged", "checkpoint.prev", "log.csv"
    ]  # fmt: skip
    assert training.verify_checkpoint(final)["epoch"] == 1
    assert training.verify_checkpoint(prev)["epoch"] == 0
    assert training.read_state(directory)["history"][0]["epoch"] == 0
    state = training.load_best(other, directory)
    assert state["best"] == 0.6 and state["best_epoch"] == 0


def test_killed_while_setting_the_damaged_checkpoint_aside(two_epochs, model, tmp_path,
                                                           monkeypatch):  # fmt: skip
    directory = _copy_run(two_epochs, tmp_path)
    _flip_byte(os.path.join(directory, "checkpoint", "last.keras"))

    def kill(name):
        if name == "demote":
            raise KeyboardInterrupt(name)

    monkeypatch.setattr(checkpoints, "_step", kill)
    # A killed process cleans nothing.
    monkeypatch.setattr(checkpoints, "_discard", lambda path: None)
    model.optimizer.iterations.assign(3)
    with pytest.raises(KeyboardInterrupt):
        _epoch(model, directory, 1, 0.4)
    assert not os.path.exists(os.path.join(directory, "checkpoint"))
    assert training.read_state(directory)["epoch"] == 0  # the previous one, still verified


def test_a_rotted_best_file_is_not_carried_into_the_next_checkpoint(model, tmp_path):
    directory = str(tmp_path / "out")
    model.optimizer.iterations.assign(0)
    callback = _epoch(model, directory, 0, 0.6)
    _epoch(model, directory, 1, 0.4, callback)
    best = os.path.join(directory, "checkpoint", "best.weights.h5")
    recorded = training.read_state(directory)["files"]["best.weights.h5"]
    _flip_byte(best)  # while the run goes on
    _epoch(model, directory, 2, 0.4, callback)
    state = training.read_state(directory)
    assert state["epoch"] == 2
    assert state["files"]["best.weights.h5"] == recorded  # the intact copy of checkpoint.prev


# --- 5. a full disk: exit status 1 and one line, not a crash at exit ---------------------

# Trains a tiny model for two epochs with `training.fit`; once the first checkpoint
# is committed, HDF5 files written to disk hit a full disk (ENOSPC) after 1 MB. Every
# epoch counts as improved, so each checkpoint writes `best.weights.h5` through HDF5.
FULL_DISK_RUN = textwrap.dedent(
    """
    import errno, io, os, sys

    import h5py

    OUT = sys.argv[1]
    _File = h5py.File


    class FullDisk(io.FileIO):
        written = 0

        def write(self, data):
            FullDisk.written += len(data)
            if FullDisk.written > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device", self.name)
            return super().write(data)


    def file(name, mode="r", *args, **kwargs):
        if mode == "w" and isinstance(name, (str, os.PathLike)):
            if os.path.isdir(os.path.join(OUT, "checkpoint")):
                name = FullDisk(os.fspath(name), "w+b")
        return _File(name, mode, *args, **kwargs)


    h5py.File = file

    import keras, numpy as np, tensorflow as tf

    import keras_sepvit
    from keras_sepvit import training
    from keras_sepvit.training.cli import exit_on_error

    training.AtomicCheckpoint._better = lambda self, value: True
    keras.utils.set_random_seed(0)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[np.arange(8) % 4]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    optimizer = training.make_optimizer(model, 1e-3, 4, 0)
    with exit_on_error():
        training.fit(model, optimizer, ds, ds, 2, OUT, jit_compile=False, tensorboard=False,
                     verbose=0)
    """
)


@pytest.mark.slow
def test_full_disk_exits_1_with_one_line_and_keeps_the_checkpoint(tmp_path):
    script, out = tmp_path / "full_disk_run.py", tmp_path / "run"
    script.write_text(FULL_DISK_RUN)
    root = os.path.dirname(os.path.dirname(os.path.abspath(keras_sepvit.__file__)))
    env = {**os.environ, "PYTHONPATH": root, "KERAS_BACKEND": "tensorflow",
           "TF_CPP_MIN_LOG_LEVEL": "3"}  # fmt: skip
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert "Could not write the checkpoint of epoch 2" in errors[0]
    assert "The disk is full" in errors[0] and errors[0].endswith("resume (--resume).")
    assert "Exception ignored" not in output and "Traceback" not in output
    assert training.verify_checkpoint(str(out / "checkpoint"))["epoch"] == 0
    assert not os.path.exists(out / "checkpoint.tmp")


# --- 10. a malformed state.json -----------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch(model, tmp_path_factory):
    """Epoch 0 committed: one checkpoint, no previous one to fall back to."""
    directory = str(tmp_path_factory.mktemp("run") / "out")
    model.optimizer.iterations.assign(0)
    _epoch(model, directory, 0, 0.6)
    return directory


def _drop(key):
    def edit(state):
        del state[key]

    return edit


def _put(key, value):
    def edit(state):
        state[key] = value

    return edit


def _put_file(name, record):
    def edit(state):
        state["files"][name] = record

    return edit


@pytest.mark.parametrize(
    "edit, message, truncated",
    [
        (_drop("epoch"), 'key "epoch" is missing', False),
        (_drop("iterations"), 'key "iterations" is missing', False),
        (_drop("history"), 'key "history" is missing', False),
        (_drop("files"), 'key "files" is missing', False),
        (_put("epoch", "1"), "key \"epoch\" must be an integer >= 0. Received: epoch='1'", False),
        (_put("iterations", None), 'key "iterations" must be an integer', False),
        (_put("history", {}), 'key "history" must be a list', False),
        (_put("logs", []), 'key "logs" must be an object', False),
        (_put("best", "0.6"), 'key "best" must be a number or null', False),
        (_put("mode", "up"), 'key "mode" must be "max" or "min"', False),
        (_put("format", 7), 'key "format" must be 1', False),
        (_put("files", {}), 'key "files" must be an object naming last.keras', True),
        (_put("files", ["last.keras"]), 'key "files" must be an object', False),
        (_put_file("last.keras", {"bytes": 10}), 'key "files" must be an object', False),
        (_put_file("../notes.txt", {"bytes": 1, "sha256": "0" * 64}), 'key "files" must', False),
        (_put_file("best.weights.h5", None), 'key "files" must be an object', False),
    ],
    ids=[
        "no-epoch",
        "no-iterations",
        "no-history",
        "no-files",
        "epoch-str",
        "iterations-null",
        "history-object",
        "logs-list",
        "best-str",
        "mode",
        "format",
        "files-empty-truncated",
        "files-list",
        "record-without-sha256",
        "unknown-file",
        "record-null",
    ],  # fmt: skip
)
def test_malformed_state_names_the_key(edit, message, truncated, one_epoch, other, tmp_path):
    directory = _copy_run(one_epoch, tmp_path)
    path = os.path.join(directory, "checkpoint", "state.json")
    with open(path) as f:
        state = json.load(f)
    del state["checksum"]
    edit(state)
    with open(path, "w") as f:  # a consistent checksum: only the form is wrong
        json.dump(checkpoints._seal(state), f)
    if truncated:  # unverified (no file listed), it would fail inside h5py
        with open(os.path.join(directory, "checkpoint", "last.keras"), "r+b") as f:
            f.truncate(100)
    weights = _weights(other)
    with pytest.raises(training.CheckpointError, match=message) as refused:
        training.restore(other, directory)
    text = str(refused.value)
    assert path in text and "--overwrite" in text and "backup" in text
    assert _same(_weights(other), weights)
    with pytest.raises(training.CheckpointError, match=message):
        training.read_state(directory)  # what check_run verifies, before any work


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "state.json is damaged \\(truncated or not JSON"),
        ("[1, 2]", "state.json is not a keras_sepvit checkpoint state"),
        ('{"checksum": 5}', 'key "checksum" must be a SHA-256'),
        (None, "last.keras is missing"),
    ],
    ids=["not-json", "not-an-object", "checksum-type", "listed-file-missing"],
)
def test_unreadable_state_or_missing_file_is_named(content, message, one_epoch, other, tmp_path):
    directory = _copy_run(one_epoch, tmp_path)
    if content is None:
        os.remove(os.path.join(directory, "checkpoint", "last.keras"))
    else:
        with open(os.path.join(directory, "checkpoint", "state.json"), "w") as f:
            f.write(content)
    with pytest.raises(training.CheckpointError, match=message) as refused:
        training.restore(other, directory)
    assert "--overwrite" in str(refused.value)
