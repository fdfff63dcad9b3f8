"""What the runtimes' own checkers say about an exported file on phones'
accelerators.

- ONNX files: ONNX Runtime's mobile usability checker (the one `python -m
  onnxruntime.tools.check_onnx_model_mobile_usability FILE` runs: the file
  optimized at the basic level, then its ops matched against the NNAPI and
  CoreML MLProgram lists that ship with ONNX Runtime). `onnx_partitions`
  returns, per accelerator, the partitions the graph would be split into
  and the ops neither could run. One partition covering every node is what
  `to_onnx(..., target="mobile")` promises.
- TFLite files: the GPU delegate's compatibility check of
  `tf.lite.experimental.Analyzer.analyze(model_path=F,
  gpu_compatibility=True)`, which prints; `tflite_gpu` reads its
  "GPU COMPATIBILITY WARNING" / "ERROR" lines.

`verdict` gives either as one line for the export report.
"""

import contextlib
import io
import logging
import os
import pathlib
import re
import tempfile

# The accelerators the ONNX checker knows, by the name it gives them, and
# the list of supported ops it matches each against.
ONNX_ACCELERATORS = {
    "NNAPI": "nnapi_supported_ops.md",
    "CoreML MLProgram": "coreml_supported_mlprogram_ops.md",
}


def onnx_partitions(path):
    """ONNX Runtime's mobile checker on an `.onnx` file, as numbers.

    Returns:
        {"NNAPI": info, "CoreML MLProgram": info}, each info a dict:
        "partitions" (int), "supported_nodes", "nodes", and
        "unsupported_ops" (sorted op types, e.g. ["Erf"]).
    """
    from onnxruntime.tools.mobile_helpers import usability_checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    quiet = logging.getLogger("keras_sepvit.mobile_checks")
    quiet.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        optimized = pathlib.Path(folder) / "model.onnx"  # what the command line checks
        optimize_model(pathlib.Path(path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
    result = {}
    for name, ops in ONNX_ACCELERATORS.items():
        if name == "NNAPI":
            info = usability_checker.check_nnapi_partitions(model, True)
        else:
            info = usability_checker.check_coreml_partitions(model, True, ops)
        result[name] = {
            "partitions": info.num_partitions,
            "supported_nodes": info.num_supported_nodes,
            "nodes": info.num_nodes,
            "unsupported_ops": sorted(op.split(":")[-1] for op in info.unsupported_ops),
        }
    return result


def supported_onnx_ops(accelerator):
    """The op types (ai.onnx domain) of the checker's list for `accelerator`."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    folder = os.path.dirname(usability_checker.__file__)
    with open(os.path.join(folder, ONNX_ACCELERATORS[accelerator])) as f:
        return frozenset(re.findall(r"^\|ai\.onnx:(\w+)\|", f.read(), re.M))


def tflite_gpu(path):
    """The GPU delegate's verdict of `tf.lite.experimental.Analyzer` on a `.tflite`.

    Returns:
        {"compatible": bool, "problems": the analyzer's "GPU COMPATIBILITY
        WARNING/ERROR" lines (op and reason)}.
    """
    import tensorflow as tf

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tf.lite.experimental.Analyzer.analyze(model_path=os.fspath(path), gpu_compatibility=True)
    text = printed.getvalue()
    problems = [" ".join(line.split()) for line in text.splitlines() if "GPU COMPATIBILITY" in line]
    compatible = not problems and "looks compatible with GPU delegate" in text
    return {"compatible": compatible, "problems": problems}


def verdict(path):
    """One line for the export report: the accelerators' checks of a file."""
    path = os.fspath(path)
    if path.endswith(".onnx"):
        parts = []
        for name, info in onnx_partitions(path).items():
            ops = ",".join(info["unsupported_ops"])
            parts.append(f"{name} {info['partitions']}" + (f" (no {ops})" if ops else ""))
        return "; ".join(parts)
    if path.endswith(".tflite"):
        gpu = tflite_gpu(path)
        if gpu["compatible"]:
            return "GPU delegate: compatible"
        ops = sorted({m for p in gpu["problems"] for m in re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", p)}
                     - {"GPU", "COMPATIBILITY", "WARNING", "ERROR"})  # fmt: skip
        return f"GPU delegate: {len(gpu['problems'])} problems" + (
            f" ({','.join(ops)})" if ops else ""
        )
    return "n/a"
