"""TensorFlow's defaults run our graphs clean, and our programs print their own lines.

Issue 17, items 12 and 13: the position encoding's depthwise conv + bias +
residual add made TensorFlow's oneDNN remapper build a node without an op
(an error line, and the function ran without Grappler); the scripts hid it by
turning the remapper off for the whole process.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_LOGGING = os.path.join(ROOT, "keras_sepvit", "tf_logging.py")

# What TensorFlow prints when the remapper fails on a graph.
REMAPPER_ERRORS = ("has an empty op name", "does not specify an operation", "tfg_optimizer")

BUILD_PREDICT_FIT = """
import numpy as np, keras, keras_sepvit
model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10)
x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
model.predict(x, verbose=0)
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(x, np.arange(4), epochs=1, verbose=0)
print("ok")
"""

# Lines of other programs in the README's main job (issue 17, item 13).
DENY = (
    "oneDNN custom operations",
    "Could not find cuda drivers",
    "absl::InitializeLog",
    "cuInit",
    "tf.lite.Interpreter is deprecated",
    "will be ignored",
    "fully_quantize:",
    "Created TensorFlow Lite XNNPACK delegate",
    "Statistics for quantized inputs",
    "Ignored output_format",
    "Skipping runtime version",
    "consider pre-processing",
    "consider to run pre-processing",
    "Traceback",
    "WARNING:",
    "deprecated",
    *REMAPPER_ERRORS,
)


def _run(args, **env):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT, **env),
    )  # fmt: skip


@pytest.mark.slow
def test_default_tensorflow_options_run_the_model_without_a_remapper_error():
    """Predict and a training step under TensorFlow's default Grappler options
    (nothing of ours imported that could change them), every C++ line shown."""
    proc = _run(["-c", BUILD_PREDICT_FIT], TF_CPP_MIN_LOG_LEVEL="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [line for line in proc.stderr.splitlines() if any(e in line for e in REMAPPER_ERRORS)]
    assert not found, f"TensorFlow's remapper failed on our graph: {found[:3]}"


def test_quiet_tensorflow_leaves_the_optimizer_options_alone():
    import runpy

    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    runpy.run_path(TF_LOGGING)["quiet_tensorflow"]()
    assert tf.config.optimizer.get_experimental_options() == before


def test_scripts_leave_the_optimizer_options_alone(load_script):
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    for folder, name in (("examples", "digits_demo"), ("export", "export_model")):
        load_script(folder, name)
    assert tf.config.optimizer.get_experimental_options() == before


def test_startup_notices_are_dropped_and_everything_else_kept():
    keep = runpy_module()["startup_lines_kept"]
    notices = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796491309.945027   16096 port.cc:153] oneDNN custom operations are on. ...\n",
        "I0000 00:00:1796491309.945390   16096 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.\n",
        "E0000 00:00:1796491323.903515   16122 cuda_platform.cc:52] failed call to cuInit: ...\n",
    ]
    other = "E0000 00:00:1796491323.903515   16122 foo.cc:1] something broke\n"
    assert keep("".join(notices) + other) == [other]
    # With a driver present, a failing cuInit is an error worth showing.
    assert keep(notices[3]) == [notices[3]]


def runpy_module():
    import runpy

    return runpy.run_path(TF_LOGGING)


# The README main job's output is checked on the run that tests/test_quantization.py
# makes anyway (test_main_job_prints_only_its_own_lines there).
