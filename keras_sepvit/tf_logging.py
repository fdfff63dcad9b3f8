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
def _stderr_filtered():
    """Runs the block with file descriptor 2 written to a file, then writes
    back what `startup_lines_kept` keeps (also if the block raised)."""
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
            sys.stderr.writelines(startup_lines_kept(text))
            sys.stderr.flush()


def quiet_tensorflow():
    """Loads TensorFlow without its start-up notices (see the module docstring).

    Call it before anything imports keras or keras_sepvit; once TensorFlow is
    loaded, it only sets `TF_CPP_MIN_LOG_LEVEL` for the children (a user's own
    value wins). Python exceptions, warnings and errors are unaffected.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    if "tensorflow" in sys.modules:
        return
    with _stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the device query that logs cuInit
