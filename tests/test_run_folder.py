"""One process per run folder, and a resume continues the run's own recipe (issue 17, 3 and 8).

A second process on a live run is refused at once (its lock `run.lock`: pid,
host, start), before it deletes or trains anything; a stale lock of a dead
process is taken over, saying so; the lock is released at the end of a run,
also after an error. `--resume` with settings other than the run's is refused
naming each, unless `--allow-changed-settings`, which logs each change.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import keras
import pytest
from test_training_trust import _snapshot  # every file's bytes under a folder

import keras_sepvit
from keras_sepvit import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_imagenet.py")
LOCK = "run.lock"
ARGS = [
    "--dataset", "digits", "--train-split", "train[:32]", "--val-split", "val[:16]",
    "--variant", "lite", "--image-size", "32", "--batch-size", "16", "--epochs", "1",
    "--warmup-epochs", "0", "--lr", "2e-3", "--clip-norm", "1", "--no-augment",
    "--no-tensorboard", "--jit-compile", "off",
]  # fmt: skip


def _fake_run(directory):
    """A folder that holds a run (what `existing_run` looks for); not a verified one."""
    os.makedirs(os.path.join(directory, "checkpoint"))
    for name in ("last.keras", "state.json", "best.weights.h5"):
        with open(os.path.join(directory, "checkpoint", name), "w") as f:
            f.write(name)
    with open(os.path.join(directory, "log.csv"), "w") as f:
        f.write("epoch,loss\n0,1.0\n")
    return str(directory)


def _write_lock(directory, pid, host=None):
    record = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-01-01 00:00:00 +0000",
        "command": "train_imagenet.py --out x",
    }
    with open(os.path.join(directory, LOCK), "w") as f:
        json.dump(record, f)


@pytest.fixture
def live_process():
    """A real process that is alive for the test (the lock's holder)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    training.locks.release_all()


# --- 3. one process per run folder ----------------------------------------------------------


def test_live_holder_refused_before_anything_is_deleted(tmp_path, live_process, load_script):
    out = _fake_run(tmp_path / "run")
    _write_lock(out, live_process.pid)
    before = _snapshot(out)
    script = load_script("examples", "train_imagenet")
    for flag in ("--overwrite", "--resume"):
        with pytest.raises(SystemExit) as refused:
            script.main([*ARGS, "--out", out, flag])
        message = str(refused.value.code)
        assert message.startswith("error:") and "\n" not in message  # exit status 1, one line
        assert "another process holds it" in message
        assert f"process {live_process.pid}" in message and "run.lock" in message
    with pytest.raises(training.RunLockedError, match="another process holds it"):
        training.fit(None, None, None, None, 1, out, overwrite=True)
    with pytest.raises(training.RunLockedError):
        training.prepare_run(None, out, overwrite=True)
    assert _snapshot(out) == before  # the run and the holder's lock are untouched


def test_stale_lock_taken_over_saying_so(tmp_path, capsys):
    out = _fake_run(tmp_path / "run")
    pid = _dead_pid()
    _write_lock(out, pid)
    training.check_run(out, overwrite=True)
    printed = capsys.readouterr().out
    assert "took over the stale lock" in printed and f"process {pid}" in printed
    assert "no longer running" in printed
    with open(os.path.join(out, LOCK)) as f:
        assert json.load(f)["pid"] == os.getpid()
    training.check_run(out, overwrite=True)  # this process holds it already
    training.release_run(out)
    assert not os.path.exists(os.path.join(out, LOCK))


def test_lock_of_another_host_refused_naming_host_and_file(tmp_path):
    out = _fake_run(tmp_path / "run")
    _write_lock(out, 1234, host="gpu-node-7")
    lock = os.path.join(out, LOCK)
    with pytest.raises(training.RunLockedError) as refused:
        training.check_run(out, resume=True)
    message = str(refused.value)
    assert "'gpu-node-7'" in message and f"delete {lock}" in message
    assert os.path.exists(lock)


def test_workers_take_no_lock(tmp_path, live_process, monkeypatch):
    out = _fake_run(tmp_path / "run")
    _write_lock(out, live_process.pid)
    before = _snapshot(out)
    monkeypatch.setattr(training.runs, "is_chief", lambda: False)
    training.check_run(out, overwrite=True)  # a worker of a cluster: only the chief locks
    assert _snapshot(out) == before


class _Model:
    """Stands in for a model: what `fit` calls, recording whether the lock is held."""

    def __init__(self, directory, error=None):
        self.lock = os.path.join(directory, LOCK)
        self.error = error
        self.locked = None

    def compile(self, *args, **kwargs):
        pass

    def fit(self, *args, **kwargs):
        self.locked = os.path.exists(self.lock)
        if self.error:
            raise self.error
        return "history"


@pytest.mark.parametrize("error", [None, RuntimeError("boom"), KeyboardInterrupt()])
def test_fit_releases_the_lock_at_the_end_and_on_errors(tmp_path, error):
    out = str(tmp_path / "run")
    model = _Model(out, error)
    if error is None:
        assert training.fit(model, None, None, None, 1, out, tensorboard=False)[0] == "history"
    else:
        with pytest.raises(type(error)):
            training.fit(model, None, None, None, 1, out, tensorboard=False)
    assert model.locked  # held while training
    assert not os.path.exists(model.lock) and not training.locks.holds(out)


def test_a_refused_run_leaves_no_lock_and_no_folder(tmp_path):
    out = _fake_run(tmp_path / "run")
    before = _snapshot(out)
    with pytest.raises(training.RunExistsError):
        training.check_run(out)
    assert _snapshot(out) == before and not training.locks.holds(out)
    with pytest.raises(ValueError):
        training.check_run(str(tmp_path / "new"), resume=True, overwrite=True)
    assert not os.path.exists(tmp_path / "new")
    with pytest.raises(training.CheckpointError):  # a resume with nothing but a log.csv
        os.remove(os.path.join(out, "log.csv"))
        shutil.rmtree(os.path.join(out, "checkpoint"))
        with open(os.path.join(out, "log.csv"), "w") as f:
            f.write("epoch\n0\n")
        training.prepare_run(None, out, resume=True)
    assert not os.path.exists(os.path.join(out, LOCK))


def test_a_script_stopped_by_an_error_releases_its_lock(tmp_path, load_script):
    out = tmp_path / "new"
    with pytest.raises(SystemExit, match="larger than the training split"):  # after the lock
        load_script("examples", "digits_demo").main(
            ["--out", str(out), "--epochs", "1", "--batch-size", "4096"]
        )
    assert not training.locks.holds(out / "checkpoints") and not os.path.exists(out)


HOLDER = """
import sys
from keras_sepvit import training
training.check_run(sys.argv[1], overwrite=True)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_second_process_on_a_live_run_is_refused(tmp_path, load_script, capsys):
    """A real process holds the run through the library; a second one, in another process
    and in this one, is refused; after the holder is killed its lock is taken over."""
    out = _fake_run(tmp_path / "run")
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, out], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(out)
        second = subprocess.run(
            [sys.executable, SCRIPT, *ARGS, "--out", out, "--overwrite"],
            env=dict(env, KERAS_BACKEND="tensorflow"), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr[-3000:]
        lines = second.stderr.strip().splitlines()
        assert "another process holds it" in lines[-1] and f"process {holder.pid}" in lines[-1]
        assert "Traceback" not in second.stderr
        with pytest.raises(SystemExit, match="another process holds it"):
            load_script("examples", "train_imagenet").main([*ARGS, "--out", out, "--resume"])
        assert _snapshot(out) == before
    finally:
        holder.kill()  # SIGKILL: no exit handler runs, the lock stays behind
        holder.wait()
    assert os.path.exists(os.path.join(out, LOCK))
    capsys.readouterr()
    training.check_run(out, overwrite=True)
    assert f"took over the stale lock {os.path.join(out, LOCK)}" in capsys.readouterr().out
    training.release_run(out)
    # A holder that ends normally (here: stdin closed) releases its lock at exit.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, out], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    assert os.path.exists(os.path.join(out, LOCK))
    holder.communicate(timeout=120)
    assert holder.returncode == 0 and not os.path.exists(os.path.join(out, LOCK))


# --- 8. a resume continues the run's own recipe ---------------------------------------------


def test_setting_changes_name_each_flag_and_skip_the_run_flags(load_script):
    script = load_script("examples", "train_imagenet")
    run = training.run_settings(script.parse_args([*ARGS, "--out", "a"]))
    now = training.run_settings(script.parse_args(
        [*ARGS, "--out", "b", "--resume", "--lr", "1e12", "--clip-norm", "0", "--xla",
         "--allow-changed-settings", "--no-augment", "--mixed-precision", "mixed_bfloat16"]
    ))  # fmt: skip
    assert "out" not in run and "jit_compile" not in run and "resume" not in run
    assert training.settings.setting_changes(run, now) == [
        "--clip-norm: run 1, now 0",
        "--lr: run 0.002, now 1e+12",
        "--mixed-precision: run none, now mixed_bfloat16",
    ]
    assert training.settings.setting_changes(
        {"lr": 0.1, "gone": True}, {"lr": 0.1, "new": None}
    ) == [
        "--gone: run on, now not a flag any more",
        "--new: run not recorded, now not set",
    ]
    assert not training.settings.setting_changes(
        {"steps": [1, 2]}, training.run_settings({"steps": (1, 2)})
    )
    assert not training.settings.setting_changes(run, json.loads(json.dumps(run)))


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A run of train_imagenet's digits settings with epoch 0 committed (a tiny
    model's checkpoint, written as `fit` does) and those settings stored."""
    keras.utils.set_random_seed(0)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    model.compile(training.make_optimizer(model, 1e-3, 100, 10), "categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    directory = str(tmp_path_factory.mktemp("committed") / "run")
    callback = training.AtomicCheckpoint(directory)
    callback.set_model(model)
    callback.on_epoch_begin(0)
    model.optimizer.iterations.assign_add(2)
    callback.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.2, "val_accuracy": 0.4})
    return directory, model


def _stored_run(committed, tmp_path, script, argv):
    out = str(tmp_path / "run")
    shutil.copytree(committed[0], out)
    training.settings.write_settings(out, training.run_settings(script.parse_args(argv)))
    return out


def test_resume_with_other_settings_refused_by_the_script(committed, tmp_path, load_script):
    script = load_script("examples", "train_imagenet")
    out = _stored_run(committed, tmp_path, script, [*ARGS, "--out", "x"])
    before = _snapshot(out)
    with pytest.raises(SystemExit) as refused:
        script.main([*ARGS, "--out", out, "--resume", "--lr", "1e12", "--clip-norm", "0"])
    message = str(refused.value.code)
    assert message.startswith("error:") and "\n" not in message  # exit status 1, one line
    assert "--clip-norm: run 1, now 0" in message and "--lr: run 0.002, now 1e+12" in message
    assert "--allow-changed-settings" in message
    assert _snapshot(out) == before and not training.locks.holds(out)
    with pytest.raises(SystemExit) as usage:  # the flag means something with --resume only
        script.parse_args([*ARGS, "--allow-changed-settings"])
    assert usage.value.code == 2


def test_allowed_changes_are_logged_and_stored(committed, tmp_path, load_script, capsys):
    script = load_script("examples", "train_imagenet")
    out = _stored_run(committed, tmp_path, script, [*ARGS, "--out", "x"])
    args = script.parse_args([*ARGS, "--out", out, "--resume", "--epochs", "3",
                              "--allow-changed-settings"])  # fmt: skip
    training.check_script_run(args)
    assert "Changed setting (--allow-changed-settings): --epochs: run 1, now 3" in (
        capsys.readouterr().out
    )
    assert training.prepare_run(committed[1], out, resume=True) == 1
    with open(os.path.join(out, training.SETTINGS_LOG)) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 and lines[0].endswith("--epochs: run 1, now 3")
    assert training.settings.read_settings(out)["epochs"] == 3  # the settings in force now
    training.release_run(out)
    # Resuming again with the same new settings needs no flag.
    args = script.parse_args([*ARGS, "--out", out, "--resume", "--epochs", "3"])
    training.check_script_run(args)


def test_run_without_stored_settings_resumes_with_a_note(committed, tmp_path, load_script,
                                                         capsys):  # fmt: skip
    script = load_script("examples", "train_imagenet")
    out = str(tmp_path / "run")
    shutil.copytree(committed[0], out)  # a run from before settings were stored
    args = script.parse_args([*ARGS, "--out", out, "--resume", "--lr", "1e-3"])
    training.check_script_run(args)
    assert "holds no stored settings" in capsys.readouterr().out
    training.prepare_run(committed[1], out, resume=True)
    assert training.settings.read_settings(out) == training.run_settings(args)
    assert not os.path.exists(os.path.join(out, training.SETTINGS_LOG))
    training.release_run(out)
    with pytest.raises(training.SettingsChangedError, match="--lr: run 0.001, now 0.002"):
        training.check_script_run(script.parse_args([*ARGS, "--out", out, "--resume"]))
    with open(os.path.join(out, training.SETTINGS), "w") as f:
        f.write("{not json")
    with pytest.raises(training.TrainingError, match="settings.json is damaged"):
        training.check_script_run(args)


@pytest.mark.slow
def test_script_stores_settings_and_resumes_only_the_same_recipe(tmp_path, load_script):
    """train_imagenet end to end: a run in its own process stores its settings and leaves no
    lock; a resume with another recipe is refused, with --allow-changed-settings it goes on."""
    out = str(tmp_path / "run")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.run([sys.executable, SCRIPT, *ARGS, "--out", out], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["checkpoint", "log.csv", training.SETTINGS]  # no lock
    assert training.settings.read_settings(out)["lr"] == 2e-3
    script = load_script("examples", "train_imagenet")
    before = _snapshot(out)
    with pytest.raises(SystemExit, match="--clip-norm: run 1, now 0.*--lr: run 0.002, now 1e"):
        script.main([*ARGS, "--out", out, "--resume", "--lr", "1e12", "--clip-norm", "0"])
    assert _snapshot(out) == before
    _, initial_epoch = script.main(
        [*ARGS, "--out", out, "--resume", "--epochs", "2", "--allow-changed-settings"]
    )
    training.release_run(out)
    assert initial_epoch == 1 and training.read_state(out)["epoch"] == 1
    with open(os.path.join(out, training.SETTINGS_LOG)) as f:
        assert f.read().strip().endswith("--epochs: run 1, now 2")
    assert training.settings.read_settings(out)["epochs"] == 2
    # An error after the lock was taken (no such data) still releases it, and the run
    # folder it created for the lock is removed again.
    failed = subprocess.run(
        [sys.executable, SCRIPT, *ARGS, "--dataset", str(tmp_path / "nowhere"),
         "--out", str(tmp_path / "new")], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert failed.returncode == 1 and "nowhere" in failed.stderr, failed.stderr[-3000:]
    assert not os.path.exists(tmp_path / "new")
    assert "run.lock" not in os.listdir(out)
