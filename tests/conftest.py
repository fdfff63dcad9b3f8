import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from keras_sepvit.parity import IO_FILE, WEIGHTS_FILE, default_reference_dir  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="run every tier (the slow tests too), as CI does; the default run is the fast tier",
    )


# `pytest -n 2 --dist loadfile` (CI) hands whole files to the two processes in
# collection order. The files that take longest go first, so that the two
# processes finish together; the order of the rest is pytest's. Ordered by the
# per-file sums of `--durations=0` in CI on 2026-12-06 (681 s for
# test_quantization.py down to 156 s for test_training.py).
LONGEST_FIRST = (
    "test_quantization.py",
    "test_distributed.py",
    "test_hub_backbone.py",
    "test_benchmarks.py",
    "test_docs.py",
    "test_export_trust.py",
    "test_export.py",
    "test_applications.py",
    "test_training.py",
)


# XLA_FLAGS for the tests' child processes on JAX. They spend most of their
# time in XLA compiling (each op, for a model run eagerly; each train step, for
# a short fit on a tiny model). LLVM optimisation level 0 compiles about 35%
# faster (the hub backbone's bfloat16 + float32 eager calls: 43 -> 28 s; the
# two-process JAX training test: 109 -> 81 s) and the tests' tolerances hold.
# The README's commands, run by the tests as a user runs them, keep the
# defaults (TensorFlow reads XLA_FLAGS too).
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def backend_env(backend, **extra):
    """The environment of a test's child process on `backend`: os.environ with
    KERAS_BACKEND, FAST_COMPILE_XLA_FLAGS on JAX, then `extra`."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env["XLA_FLAGS"] = FAST_COMPILE_XLA_FLAGS
    env.update(extra)
    return env


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist >= 3.6
        # xdist's own reordering (most tests first) would undo LONGEST_FIRST
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Tiers, as keras-hub's conftest does them: plain `pytest` is the fast tier
    (minutes); `pytest --full` adds the tests marked `slow` (full-size variants,
    other backends in child processes, script training runs, the docs' blocks).
    An explicit `-m` expression is obeyed as given. Then `LONGEST_FIRST`."""
    if not (config.getoption("--full") or config.option.markexpr):
        slow = [item for item in items if "slow" in item.keywords]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if "slow" not in item.keywords]

    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


def pytest_report_header(config):
    if not (config.getoption("--full") or config.option.markexpr):
        return "tier: fast (tests marked slow are deselected; `pytest --full` runs every tier)"
    return None


@pytest.fixture(scope="session")
def reference_dir():
    """The authors' reference vectors (shared/reference beside the repository)."""
    directory = default_reference_dir()
    if not os.path.exists(os.path.join(directory, WEIGHTS_FILE)):
        message = (
            f"reference files not found in {directory!r}; set KERAS_SEPVIT_REFERENCE to the "
            f"folder holding {WEIGHTS_FILE} and {IO_FILE}"
        )
        if os.environ.get("KERAS_SEPVIT_REQUIRE_REFERENCE"):
            pytest.fail(message)
        pytest.skip(message)
    return directory


@pytest.fixture(scope="session")
def reference_weights(reference_dir):
    return os.path.join(reference_dir, WEIGHTS_FILE)


@pytest.fixture(scope="session")
def reference_io(reference_dir):
    import numpy as np

    with np.load(os.path.join(reference_dir, IO_FILE)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def load_script():
    """Imports a script of the repository (examples/, benchmarks/) as a module."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(folder, name):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(root, folder, f"{name}.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_sessionfinish(session, exitstatus):
    """TensorFlow and then triton (PyTorch's CUDA wheel imports it, e.g. from
    torch.onnx.export) in one process is a segmentation fault on a machine
    with that wheel: the suite must keep PyTorch work in child processes."""
    import sys

    if "tensorflow" in sys.modules and ("triton" in sys.modules or "torch.onnx" in sys.modules):
        session.exitstatus = 1
        print(
            "\nERROR: the test process imported TensorFlow and triton/torch.onnx; "
            "move the PyTorch part into a child process (it segfaults with PyTorch's CUDA wheel)."
        )
