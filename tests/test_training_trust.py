"""Training never loses a run or passes off a broken one (issue 10).

Refusals before any work, checkpoints that are one verified unit whatever
moment a process dies at, non-finite losses that stop the run, and errors that
name the file or flag to fix. Tiny models, a few steps, tmp folders.
"""

import csv
import errno
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sepvit
from keras_sepvit import data, training

LOGS = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.2, "val_accuracy": 0.4}


def _compiled(classes=4):
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=classes)
    model.compile(training.make_optimizer(model, 1e-3, 100, 10), "categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.fixture(scope="module")
def model():
    return _compiled()


@pytest.fixture(scope="module")
def other():
    """A second model of the same architecture, to restore into."""
    return _compiled()


def _epoch(model, directory, epoch, logs=LOGS):
    """What `fit` does around one epoch: 3 optimizer steps, then the checkpoint callback."""
    callback = training.AtomicCheckpoint(directory)
    callback.set_model(model)
    callback.on_epoch_begin(epoch)
    model.optimizer.iterations.assign_add(3)
    callback.on_epoch_end(epoch, dict(logs))
    return callback


def _log_epochs(directory):
    with open(os.path.join(directory, "log.csv")) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _snapshot(directory):
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, directory)] = open(path, "rb").read()
    return files


def _weights(model):
    return [v.numpy().copy() for v in model.weights + model.optimizer.variables]


def _same(a, b):
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A run with epochs 0 and 1 committed (epoch 0's checkpoint kept as .prev)."""
    directory = str(tmp_path_factory.mktemp("run") / "out")
    model.optimizer.iterations.assign(0)
    _epoch(model, directory, 0)
    _epoch(model, directory, 1, {**LOGS, "val_accuracy": 0.6})
    return directory


# --- 1. an existing run is never overwritten without being asked -------------------------


def test_existing_run_refused_without_resume_or_overwrite(run_dir, tmp_path, load_script):
    out = str(tmp_path / "out")
    shutil.copytree(run_dir, out)
    before = _snapshot(out)
    script = load_script("examples", "train_imagenet")
    with pytest.raises(SystemExit, match="--resume.*--overwrite") as refused:
        script.main(["--dataset", str(tmp_path / "nowhere"), "--out", out])
    assert str(refused.value.code).startswith("error:")
    with pytest.raises(training.RunExistsError, match="resume=True.*overwrite=True"):
        training.fit(None, None, None, None, 1, out)  # before anything is compiled or loaded
    assert _snapshot(out) == before


def test_digits_demo_refuses_existing_run(run_dir, tmp_path, load_script):
    out = tmp_path / "digits"
    shutil.copytree(run_dir, out / "checkpoints")
    before = _snapshot(str(out))
    with pytest.raises(SystemExit, match="--resume.*--overwrite"):
        load_script("examples", "digits_demo").main(["--out", str(out), "--epochs", "1"])
    assert _snapshot(str(out)) == before


@pytest.mark.slow
def test_overwrite_replaces_only_the_run_and_writes_tensorboard(run_dir, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(run_dir, out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("mine")
    keras.utils.set_random_seed(0)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(4, dtype="float32")[np.arange(8) % 4]))
    ds = ds.batch(4)
    optimizer = training.make_optimizer(model, 1e-3, 2, 0)
    training.fit(model, optimizer, ds, ds, 1, out, overwrite=True, jit_compile=False,
                 tensorboard=True, verbose=0)  # fmt: skip
    assert open(os.path.join(out, "notes.txt")).read() == "mine"
    assert _log_epochs(out) == [0]
    state = training.read_state(out)
    assert state["epoch"] == 0 and state["iterations"] == 2
    assert not os.path.exists(os.path.join(out, "checkpoint.prev"))  # the old run is gone
    events = [f for _, _, fs in os.walk(os.path.join(out, "tensorboard")) for f in fs]
    assert any(f.startswith("events.out.tfevents") for f in events)


# --- 2. one atomic, verified unit ---------------------------------------------------------

STEPS = ["mkdir", "best", "last", "state", "rotate", "demote", "commit", "log"]


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.slow
def test_kill_at_any_point_leaves_a_resumable_run(step, run_dir, model, other, tmp_path,
                                                  monkeypatch):  # fmt: skip
    directory = str(tmp_path / "out")
    shutil.copytree(run_dir, directory)
    model.optimizer.iterations.assign(6)

    def kill(name):
        if name == step:
            if name == "rotate":  # killed in the middle of deleting checkpoint.prev
                os.remove(os.path.join(directory, "checkpoint.prev", "best.weights.h5"))
            raise _Killed(name)

    with monkeypatch.context() as m:
        m.setattr(training.checkpoints, "_step", kill)
        # a killed process cleans nothing
        m.setattr(training.checkpoints, "_discard", lambda path: None)
        with pytest.raises(_Killed):
            _epoch(model, directory, 2, {**LOGS, "val_accuracy": 0.9})

    state = training.read_state(directory)  # verifies every checksum
    committed = STEPS.index(step) >= STEPS.index("commit")
    assert state["epoch"] == (2 if committed else 1)
    other.optimizer.iterations.assign(0)
    start = training.restore(other, directory)
    assert start == state["epoch"] + 1
    assert int(other.optimizer.iterations) == state["iterations"]
    # The resumed run goes on, and its log holds each epoch once.
    for epoch in range(start, 4):
        _epoch(other, directory, epoch, {**LOGS, "val_accuracy": 0.9 if epoch == 2 else 0.4})
    assert _log_epochs(directory) == [0, 1, 2, 3]
    assert training.read_state(directory)["best_epoch"] == 2
    assert sorted(os.listdir(directory)) == ["checkpoint", "checkpoint.prev", "log.csv"]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("state.json", os.remove, "state.json is missing"),
        ("state.json", _truncate, "state.json is damaged"),
        ("last.keras", _truncate, "last.keras is truncated"),
        ("last.keras", os.remove, "last.keras is missing"),
        ("best.weights.h5", _flip_byte, "best.weights.h5 is corrupt"),
    ],
)
def test_damaged_checkpoint_refused_with_what_to_do(name, damage, message, run_dir, other,
                                                    tmp_path, load_script):  # fmt: skip
    directory = str(tmp_path / "out")
    shutil.copytree(run_dir, directory)
    damage(os.path.join(directory, "checkpoint", name))
    # Both checkpoints damaged: with an intact checkpoint.prev the run goes on from it
    # (tests/test_checkpoint_store_trust.py).
    damage(os.path.join(directory, "checkpoint.prev", name))
    before, weights = _snapshot(directory), _weights(other)
    with pytest.raises(training.CheckpointError, match=message) as refused:
        training.restore(other, directory)
    text = str(refused.value)
    assert os.path.join(directory, "checkpoint", name) in text
    assert "previous checkpoint is damaged too" in text and "--overwrite" in text
    assert _same(_weights(other), weights)
    with pytest.raises(SystemExit, match=message):  # before loading any data
        load_script("examples", "train_imagenet").main(
            ["--dataset", str(tmp_path / "nowhere"), "--out", directory, "--resume"]
        )
    assert _snapshot(directory) == before  # the previous good checkpoint is kept


def test_resume_without_checkpoint_but_with_a_log_is_refused(run_dir, other, tmp_path):
    directory = str(tmp_path / "out")
    shutil.copytree(run_dir, directory)
    shutil.rmtree(os.path.join(directory, "checkpoint"))
    shutil.rmtree(os.path.join(directory, "checkpoint.prev"))
    with pytest.raises(training.CheckpointError, match="log.csv.*no checkpoint"):
        training.restore(other, directory)


def test_best_weights_load_verified(run_dir, other):
    state = training.load_best(other, run_dir)
    assert state["best"] == 0.6 and state["best_epoch"] == 1


# --- 3. non-finite loss -------------------------------------------------------------------


def test_non_finite_loss_or_weight_stops_and_saves_nothing(run_dir, model, tmp_path):
    directory = str(tmp_path / "out")
    shutil.copytree(run_dir, directory)
    before = _snapshot(directory)
    with pytest.raises(training.NonFiniteError, match="loss=nan.*epoch 3.*--lr"):
        _epoch(model, directory, 2, {**LOGS, "loss": float("nan"), "val_accuracy": 0.99})
    kernel = model.get_layer("predictions").kernel
    saved = kernel.numpy()
    kernel.assign(np.full_like(saved, np.inf))
    try:
        with pytest.raises(training.NonFiniteError, match="a weight is not finite"):
            _epoch(model, directory, 2, {**LOGS, "val_accuracy": 0.99})
    finally:
        kernel.assign(saved)
    assert _snapshot(directory) == before


@pytest.mark.slow
def test_train_imagenet_exits_non_zero_on_nan(tmp_path, load_script):
    root = _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="not finite") as stopped:
        load_script("examples", "train_imagenet").main(SMOKE + [
            "--dataset", root, "--out", str(out), "--lr", "1e30", "--warmup-epochs", "0"
        ])  # fmt: skip
    assert str(stopped.value.code).startswith("error:")  # exit status 1
    assert "No checkpoint was written" in str(stopped.value.code)
    assert not os.path.exists(out / "checkpoint") and not os.path.exists(out / "log.csv")


# --- 4. a batch larger than the training split --------------------------------------------


def test_batch_larger_than_training_split_refused_before_training(tmp_path, load_script):
    root = _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    args = [a for a in SMOKE if a not in ("--steps-per-epoch", "2")]
    args[args.index("--batch-size") + 1] = "64"
    with pytest.raises(SystemExit, match=r"--batch-size 64 is larger than the training split \(6"):
        load_script("examples", "train_imagenet").main(
            [*args, "--dataset", root, "--out", str(out)]
        )
    assert not os.path.exists(out / "checkpoint")
    with pytest.raises(ValueError, match="batch_size=64, num_examples=6"):
        data.steps_per_epoch(6, 64)
    assert data.steps_per_epoch(6, 4) == 1


# --- 5. TensorBoard without the package ---------------------------------------------------


def test_tensorboard_missing_degrades_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(training.runs, "_tensorboard_available", lambda: False)
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        callbacks = training.training_callbacks(str(tmp_path))
    assert not any(isinstance(c, keras.callbacks.TensorBoard) for c in callbacks)
    monkeypatch.setattr(training.runs, "_tensorboard_available", lambda: True)
    callbacks = training.training_callbacks(str(tmp_path))
    assert any(isinstance(c, keras.callbacks.TensorBoard) for c in callbacks)


# --- 6. disk full -------------------------------------------------------------------------


def test_disk_full_is_a_clear_error_and_leaves_no_temporary(run_dir, model, tmp_path,
                                                            monkeypatch):  # fmt: skip
    directory = str(tmp_path / "out")
    shutil.copytree(run_dir, directory)
    before = _snapshot(directory)

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(model, "save", full_disk)
    with pytest.raises(training.CheckpointWriteError, match="disk is full") as failed:
        _epoch(model, directory, 2)
    assert failed.value.errno == errno.ENOSPC
    assert "epoch 2) is in" in str(failed.value) and "--resume" in str(failed.value)
    assert _snapshot(directory) == before
    assert sorted(os.listdir(directory)) == ["checkpoint", "checkpoint.prev", "log.csv"]


# --- 7. unreadable files in an image folder -----------------------------------------------


def _image_folder(root, classes=3, per_class=2):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for c in range(classes):
            folder = os.path.join(root, split, f"class_{c}")
            os.makedirs(folder)
            for i in range(per_class):
                image = rng.integers(0, 255, (40, 48, 3), dtype="uint8")
                keras.utils.save_img(os.path.join(folder, f"{i}.png"), image)
    return str(root)


SMOKE = [
    "--variant", "lite", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
    "--steps-per-epoch", "2", "--val-steps", "1", "--no-tensorboard",
]  # fmt: skip


def test_unreadable_image_named_or_skipped_with_a_count(tmp_path, capsys):
    root = _image_folder(tmp_path / "images")
    bad = os.path.join(root, "validation", "class_1", "notes.jpg")
    with open(bad, "w") as f:
        f.write("not an image")
    truncated = os.path.join(root, "validation", "class_2", "0.png")
    _truncate(truncated)
    with pytest.raises(ValueError, match="2 of 7 files.*--skip-unreadable") as refused:
        data.load_split(root, "validation")
    assert bad in str(refused.value) and truncated in str(refused.value)
    split = data.load_split(root, "validation", skip_unreadable=True)
    assert split.num_examples == 5
    assert "Skipped 2 unreadable files" in capsys.readouterr().out
    assert len(list(split.dataset)) == 5


# --- 8. short runs ------------------------------------------------------------------------


def test_warmup_longer_than_the_run(load_script, capsys):
    script = load_script("examples", "train_imagenet")
    args = script.parse_args(["--epochs", "3"])
    assert training.warmup_epochs(args.epochs, 5, args.warmup_epochs) == 2
    assert "--warmup-epochs" in capsys.readouterr().out
    args = script.parse_args(["--epochs", "3", "--warmup-epochs", "3"])
    with pytest.raises(training.TrainingError, match="--warmup-epochs must be .* smaller than"):
        training.warmup_epochs(args.epochs, 5, args.warmup_epochs)  # the script: exit status 1
    demo = load_script("examples", "digits_demo")
    assert demo.parse_args(["--epochs", "2"]).warmup_epochs == 1
    assert demo.parse_args([]).warmup_epochs == 3
    with pytest.raises(ValueError, match="--warmup-epochs.*warmup_steps=10"):
        training.warmup_cosine_schedule(1e-3, 5, 10)


# --- 9. restore into a model that does not fit --------------------------------------------


def test_restore_into_a_model_that_does_not_fit_changes_nothing(run_dir):
    wrong = _compiled(classes=3)
    weights = _weights(wrong)
    with pytest.raises(ValueError, match=r"does not fit.*, 4\).*, 3\).*Nothing was"):
        training.restore(wrong, run_dir)
    assert _same(_weights(wrong), weights)


# --- 10. the digits report ----------------------------------------------------------------


def test_digits_report_rounds_and_names_the_best_epoch(load_script):
    demo = load_script("examples", "digits_demo")
    text = demo.best_epoch_text({"best": 0.98611111, "best_epoch": 36})
    assert text == "0.9861 (epoch 37)"
    lines = demo.report_lines({"held-out test accuracy": 0.9777777791023254, "epochs": 60})
    assert "| held-out test accuracy | 0.9778 |" in lines and "| epochs | 60 |" in lines
