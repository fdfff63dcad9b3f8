"""Quiet TensorFlow for the command-line programs (TensorFlow only).

Without this, the README's main job printed about 2,200 lines, among them
E-level lines that are harmless here and alarming to read:
- `failed call to cuInit`: TensorFlow's CUDA build on a machine with no GPU;
- `Node ... pos_encoding ... has an empty op name` / `remapper failed`:
  Grappler's remapper tries to fuse the position encoding's depthwise
  convolution, bias and residual add into one kernel that this CPU build
  lacks, reports it as an error, and runs the unfused graph. Turning the
  remapper off runs the same graph without the failed attempt.

The remapper setting is process-wide, and it is not neutral for every graph:
with it off, keras-hub's `RetinaNetObjectDetector.predict` (graph-mode NMS)
returned other boxes than eager decoding of the same outputs (55 vs 62 on a
test detector), while with it on both agree. Our scripts decode eagerly
(`keras_sepvit.tasks.retinanet.detect`), so their results do not depend on
it; call this only in a program's `main()`, never from library code.
"""

import os


def quiet_tensorflow():
    """Call first thing in a `main()`: hides TensorFlow's C++ INFO/WARNING/ERROR
    log lines (a user's own TF_CPP_MIN_LOG_LEVEL wins) and turns off the
    Grappler remapper (see the module docstring). Python exceptions are
    unaffected. The log level only takes effect if TensorFlow is not loaded
    yet, so a script also sets TF_CPP_MIN_LOG_LEVEL before its first import
    of keras or keras_sepvit."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"remapping": False})
