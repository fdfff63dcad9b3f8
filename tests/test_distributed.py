"""Distributed training on the engines Keras has, on this CPU (issue 11).

Every run is `examples/train_imagenet.py` in child processes (a backend is
fixed per process, and a TensorFlow cluster must be set up before any op):
SepViT-Lite on 128 of scikit-learn's digits at 32x32, global batch 32, so 4
steps an epoch, with `--no-augment` (fixed batches) and no stochastic depth,
so runs with different worker or device counts must give the same numbers.
Gradient clipping at norm 1 is active, which Keras alone clips per replica.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_COMPILE_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_imagenet.py")
ARGS = [
    "--dataset", "digits", "--train-split", "train[:128]", "--val-split", "val[:64]",
    "--variant", "lite", "--image-size", "32", "--batch-size", "32", "--epochs", "2",
    "--warmup-epochs", "1", "--no-augment", "--drop-path", "0", "--lr", "2e-3",
    "--clip-norm", "1", "--no-tensorboard",
]  # fmt: skip
TIMEOUT = 600


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(backend="tensorflow", devices=1, **extra):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAGS}"
    env.update(extra)
    return env


def _start(out, env, *extra):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *ARGS, "--out", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs, timeout=TIMEOUT):
    outputs = []
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        outputs.append(output)
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def _train(out, env, *extra):
    return _finish([_start(out, env, *extra)])[0]


def _tf_workers(out, n, *extra, tmp_dirs=None):
    """`n` TensorFlow workers on localhost, one TF_CONFIG each."""
    hosts = [f"localhost:{p}" for p in _free_ports(n)]
    procs = []
    for i in range(n):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        env = _env(TF_CONFIG=json.dumps(config))
        if tmp_dirs:
            env["TMPDIR"] = str(tmp_dirs[i])
        procs.append(_start(out, env, *extra))
    return procs


def _weights(out):
    """The committed checkpoint's model weights, by path in the file."""
    import io
    import zipfile

    import h5py

    arrays = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with zipfile.ZipFile(os.path.join(out, "checkpoint", "last.keras")) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
            h5.visititems(visit)
    return arrays


def _state(out):
    with open(os.path.join(out, "checkpoint", "state.json")) as f:
        return json.load(f)


def _losses(out):
    return [row["loss"] for row in _state(out)["history"]]


def _assert_same_weights(a, b, rtol=1e-4, atol=1e-5):
    wa, wb = _weights(a), _weights(b)
    model = [k for k in wa if not k.startswith("optimizer/")]
    assert model and set(wa) == set(wb)
    for name in model:
        np.testing.assert_allclose(wa[name], wb[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one TensorFlow process, one device, the same global batch."""
    out = tmp_path_factory.mktemp("single") / "run"
    output = _train(out, _env(), "--jit-compile", "off")
    assert "1 replica(s), global batch 32" in output
    return out


@pytest.fixture(scope="module")
def jax_single(tmp_path_factory):
    """The JAX reference: one process, one device (each backend draws its own initial weights)."""
    out = tmp_path_factory.mktemp("jax_single") / "run"
    output = _train(out, _env("jax", devices=1))
    assert "Backend jax, 1 replica(s), global batch 32, jit_compile=True" in output
    return out


@pytest.mark.slow
def test_tf_two_workers_equal_one_process(single, tmp_path):
    out = tmp_path / "two"
    tmp_dirs = [tmp_path / "tmp0", tmp_path / "tmp1"]
    for d in tmp_dirs:
        d.mkdir()
    outputs = _finish(_tf_workers(out, 2, "--jit-compile", "off", tmp_dirs=tmp_dirs))
    assert "2 replica(s), global batch 32" in outputs[0]
    assert "Done: epoch 2/2" in outputs[0] and "Done" not in outputs[1]  # the chief reports
    # Written once, by the chief; the other worker's scratch copies are gone.
    assert sorted(os.listdir(out)) == ["checkpoint", "checkpoint.prev", "log.csv", "settings.json"]
    assert all(os.listdir(d) == [] for d in tmp_dirs)
    state = _state(out)
    assert state["iterations"] == 8  # 4 steps of 32 per epoch: the batch is global
    np.testing.assert_allclose(_losses(out), _losses(single), rtol=1e-4)
    _assert_same_weights(out, single)


@pytest.mark.slow
def test_tf_cluster_killed_on_one_worker_resumes(single, tmp_path):
    out = tmp_path / "killed"
    procs = _tf_workers(out, 2, "--jit-compile", "off")
    state = os.path.join(out, "checkpoint", "state.json")
    deadline = time.time() + TIMEOUT
    while not os.path.exists(state) and time.time() < deadline:
        assert procs[0].poll() is None, procs[0].communicate()[0][-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)  # worker 1 dies after epoch 1 was committed
    try:
        procs[0].wait(timeout=60)  # the chief stops on the lost peer, or hangs in a collective
    except subprocess.TimeoutExpired:
        procs[0].kill()
    for proc in procs:
        proc.communicate()
    assert _state(out)["epoch"] in (0, 1)
    # The whole cluster restarts with --resume and ends where an unbroken run ends.
    outputs = _finish(_tf_workers(out, 2, "--jit-compile", "off", "--resume"))
    assert "Done: epoch 2/2" in outputs[0]
    assert [row["epoch"] for row in _state(out)["history"]] == [0, 1]
    assert _state(out)["iterations"] == 8
    _assert_same_weights(out, single)


@pytest.mark.slow
def test_jax_two_devices_equal_one_device_and_resume_exactly(jax_single, tmp_path):
    two = tmp_path / "two"
    output = _train(two, _env("jax", devices=2))
    assert "Backend jax, 2 replica(s), global batch 32, jit_compile=True" in output
    np.testing.assert_allclose(_losses(two), _losses(jax_single), rtol=1e-4)
    _assert_same_weights(two, jax_single)
    # Killed after epoch 1: its checkpoint is the one kept as checkpoint.prev.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.rename(two / "checkpoint.prev", resumed / "checkpoint")
    output = _train(resumed, _env("jax", devices=2), "--resume")
    assert "Resuming at epoch 2" in output
    assert _state(resumed)["history"] == _state(two)["history"]
    _assert_same_weights(resumed, two, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_jax_two_processes_equal_one(jax_single, tmp_path):
    """Multi-host JAX on one machine: two processes joined over Gloo, one CPU device each."""
    out = tmp_path / "hosts"
    (port,) = _free_ports(1)
    procs = [
        _start(out, _env("jax", devices=1), "--coordinator", f"localhost:{port}",
               "--num-processes", "2", "--process-id", str(i))
        for i in range(2)
    ]  # fmt: skip
    outputs = _finish(procs)
    assert "Backend jax, 2 replica(s)" in outputs[0] and "Done: epoch 2/2" in outputs[0]
    assert "Done" not in outputs[1]
    assert sorted(os.listdir(out)) == ["checkpoint", "checkpoint.prev", "log.csv", "settings.json"]
    np.testing.assert_allclose(_losses(out), _losses(jax_single), rtol=1e-4)
    _assert_same_weights(out, jax_single)


@pytest.mark.slow
def test_torch_trains_and_resumes(tmp_path):
    out = tmp_path / "torch"
    output = _train(out, _env("torch"))
    assert "Backend torch, 1 replica(s), global batch 32, jit_compile=False" in output
    assert _state(out)["iterations"] == 8
    assert all(np.isfinite(row["loss"]) for row in _state(out)["history"])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.rename(out / "checkpoint.prev", resumed / "checkpoint")
    output = _train(resumed, _env("torch"), "--resume")
    assert "Resuming at epoch 2" in output
    _assert_same_weights(resumed, out, rtol=1e-5, atol=1e-6)


def test_backend_switch_in_a_loaded_process_is_refused(load_script):
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "torch"
    with pytest.raises(SystemExit, match=f"--backend {other}"):
        load_script("examples", "train_imagenet").main(["--backend", other])


def test_cluster_and_chief_from_tf_config(monkeypatch):
    from keras_sepvit import training

    hosts = ["localhost:1", "localhost:2"]
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert training.cluster_resolver() is None and training.is_chief()
    for task, chief in ((("worker", 0), True), (("worker", 1), False)):
        config = {"cluster": {"worker": hosts}, "task": {"type": task[0], "index": task[1]}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        resolver = training.cluster_resolver()
        assert resolver.cluster_spec().as_dict() == {"worker": hosts}
        assert training.is_chief() is chief
    config = {"cluster": {"chief": hosts[:1], "worker": hosts[1:]},
              "task": {"type": "worker", "index": 0}}  # fmt: skip
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert not training.is_chief()  # with a "chief" task, worker 0 is not it
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON.*not json"):
        training.cluster_resolver()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="policy='rows'"):
        training.shard_by(None, "rows")
    with pytest.raises(ValueError, match="backend='tensorflow'"):
        training.initialize_multi_host("localhost:1", 2, 0)
    assert training.default_jit_compile("jax") is True
    with pytest.raises(ValueError, match="backend='mxnet'"):
        training.default_jit_compile("mxnet")


def test_non_chief_writes_nothing_to_the_run(tmp_path, monkeypatch):

    import keras_sepvit
    from keras_sepvit import training

    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    model.compile(training.make_optimizer(model, 1e-3, 100, 10), "categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    saved = []
    original = model.save

    def save(path, **kwargs):
        saved.append(path)
        return original(path, **kwargs)

    monkeypatch.setattr(model, "save", save)
    out = tmp_path / "run"
    callback = training.AtomicCheckpoint(str(out), chief=False)
    callback.set_model(model)
    callback.on_epoch_begin(0)
    model.optimizer.iterations.assign_add(3)
    callback.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    assert not out.exists() and os.listdir(scratch) == []
    assert len(saved) == 1 and str(scratch) in saved[0]  # it wrote, like the chief, then deleted
    assert callback.state["epoch"] == 0 and callback.best == 0.5
