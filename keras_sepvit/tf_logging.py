"""Quiet start of TensorFlow for the command-line programs (standard library only).

TensorFlow's CUDA build prints, while it loads, lines that no setting reaches:
its two libraries each log `oneDNN custom operations are on` and, on a machine
without an NVIDIA driver, `Could not find cuda drivers`, before absl logging
is set up (so `TF_CPP_MIN_LOG_LEVEL` is not read yet); the first device
query then logs `failed call to cuInit` as an error, the consequence of the
missing driver. `quiet_tensorflow()` loads TensorFlow with its standard error
written to a file, and writes back every line but those notices: any other
warning or error TensorFlow prints while loading still shows.

`TF_CPP_MIN_LOG_LEVEL` is set to 1 (INFO off, warnings and errors kept) if
the user has not set it; it is an environment variable of this process and
its children. Nothing else is changed: Grappler's options stay TensorFlow's
defaults (an earlier version turned the remapper off for the whole process,
which changed keras-hub's RetinaNet boxes; the position encoding no longer
trips it, see `keras_sepvit.layers.PositionEncoding`).

`converter_notices_dropped()` does the same around a TFLite conversion or a
LiteRT interpreter's start: the converter's and the runtime's notices of
normal work (listed in `CONVERTER_NOTICES` / `CONVERTER_WARNINGS`, each with
why it asks nothing of the user) are dropped; any other line is written back.

This module imports nothing of keras_sepvit or Keras: importing
`keras_sepvit.tf_logging` runs `keras_sepvit/__init__.py`, which loads
TensorFlow, so a script runs this file by path before its first import of
keras_sepvit (`runpy.run_path(<repository>/keras_sepvit/tf_logging.py)`).
"""

import contextlib
import os
import re
import sys
import tempfile
import warnings

TF_LOG_LEVEL = "1"

# TensorFlow's notices of its normal start on a CPU machine.
_STARTUP_NOTICES = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers"),
)
_NO_DRIVER = _STARTUP_NOTICES[2]
_CUINIT_WITHOUT_DRIVER = re.compile(
    r"^E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit"
)


def startup_lines_kept(text):
    """The lines of `text` (TensorFlow's start-up output) that are not its notices.

    `failed call to cuInit` is dropped only when TensorFlow said just before
    that it found no CUDA driver; on a machine with one it is a real error.
    """
    lines = text.splitlines(keepends=True)
    no_driver = any(_NO_DRIVER.match(line) for line in lines)
    return [
        line
        for line in lines
        if not any(p.match(line) for p in _STARTUP_NOTICES)
        and not (no_driver and _CUINIT_WITHOUT_DRIVER.match(line))
    ]


@contextlib.contextmanager
def stderr_filtered(keep=startup_lines_kept):
    """Runs the block with file descriptor 2 written to a file, then writes
    back the lines `keep(text)` returns (also if the block raised)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            sys.stderr.writelines(keep(text))
            sys.stderr.flush()


# Notices of normal work from the TFLite converter and LiteRT's C++ code
# (printed to file descriptor 2 whatever `TF_CPP_MIN_LOG_LEVEL` says); each is
# expected on every export and asks nothing of the user:
CONVERTER_NOTICES = (
    # the converter ignores two options it sets itself for the SavedModel path
    re.compile(r"^W\d{4} [\d:.]+ +\d+ tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored "),
    # the runtime-version metadata is written by the exporter, as it says
    re.compile(r"^W\d{4} [\d:.]+ +\d+ flatbuffer_export\.cc:\d+\] Skipping runtime version"),
    # the calibrating quantizer's settings, printed with std::cerr on every call
    re.compile(r"^fully_quantize: \d, inference_type: \d+, input_inference_type: \w+, "),
    # LiteRT's CPU fast path, applied as designed (the export report says which files use it)
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
)
# Python warnings of the same kind: the converter's advice to give statistics
# for int8 inputs (our int8-full file stores its input scale, read back by
# `runtimes.TFLiteRunner`), and the deprecation of `tf.lite.Interpreter`, which
# TensorFlow's own calibrator uses inside `convert()` (ours is ai_edge_litert's).
CONVERTER_WARNINGS = (
    r"Statistics for quantized inputs were expected",
    r"\s*Warning: tf\.lite\.Interpreter is deprecated",
)


def _without(patterns):
    def keep(text):
        lines = text.splitlines(keepends=True)
        return [line for line in lines if not any(p.match(line) for p in patterns)]

    return keep


@contextlib.contextmanager
def converter_notices_dropped():
    """Runs a TFLite conversion or interpreter start without the notices above.

    Everything else the block prints (warnings, errors) is written back as it
    came; Python exceptions pass through.
    """
    with warnings.catch_warnings():
        for message in CONVERTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        with stderr_filtered(_without(CONVERTER_NOTICES)):
            yield


def quiet_tensorflow():
    """Loads TensorFlow without its start-up notices (see the module docstring).

    Call it before anything imports keras or keras_sepvit; once TensorFlow is
    loaded, it only sets `TF_CPP_MIN_LOG_LEVEL` for the children (a user's own
    value wins). Python exceptions, warnings and errors are unaffected.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    if "tensorflow" in sys.modules:
        return
    with stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the device query that logs cuInit
