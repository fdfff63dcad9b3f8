"""The export report: every edge format of a classifier, written, checked and
compared with Keras on held-out images (`export/export_model.py`).

One row per format: file size, max |output difference| against Keras, top-1
agreement with Keras, held-out accuracy, batch-1 latency (median over
`runs` after warm-up, 1 and 2 threads) in the runtime that serves the file,
and what the accelerators' checkers say of it (`keras_sepvit.export.
mobile_checks.verdict`: NNAPI / CoreML MLProgram partitions of an ONNX file,
the GPU delegate's verdict on a TFLite file).
"""

import json
import os

import numpy as np

from keras_sepvit.export import mobile_checks
from keras_sepvit.export.onnx import to_onnx
from keras_sepvit.export.onnx_mobile import to_ort
from keras_sepvit.export.runtimes import ONNXRunner, TFLiteRunner, median_latency_ms
from keras_sepvit.export.tflite import to_tflite

# The report's formats: TFLite modes (int8-qat: "int8" of a QAT-fine-tuned
# copy, `keras_sepvit.export.qat`), then ONNX float32 and int8 QDQ, and the
# ONNX file for NNAPI / CoreML (target="mobile") with its `.ort` copy.
FORMATS = (
    "float32", "float16", "dynamic", "int8", "int8-full", "int16x8", "int8-qat",
    "onnx", "onnx-int8", "onnx-mobile",
)  # fmt: skip


def export_format(fmt, model, folder, sample_inputs, calibration, min_agreement, qat_epochs=None):
    """Writes and checks one format of `FORMATS` (static batch 1) in `folder`.

    Args:
        fmt: a name from `FORMATS`.
        model: the Keras model; for "int8-qat", its QAT-fine-tuned copy.
        folder: the output folder.
        sample_inputs: images the file is compared with Keras on.
        calibration: calibration images (N, H, W, C) for the calibrated formats.
        min_agreement: `to_tflite`'s and `to_onnx`'s least top-1 agreement of
            an int8 file (0: no check).
        qat_epochs: the fine-tuning epochs of an "int8-qat" model, for its name.

    Returns:
        `(name, path, runner)`: the report's name of the format, the file, and
        its runner class (`TFLiteRunner` or `ONNXRunner`).
    """
    if fmt == "onnx-mobile":  # one partition on NNAPI and CoreML, and the .ort of it
        path = to_onnx(model, os.path.join(folder, "model_mobile.onnx"),
                       sample_inputs=sample_inputs, batch_size=1, target="mobile")  # fmt: skip
        to_ort(path, sample_inputs=sample_inputs)
        return "onnx mobile, + .ort (ONNX Runtime)", path, ONNXRunner
    if fmt in ("onnx", "onnx-int8"):  # static batch 1, rewritten for ONNX Runtime
        int8 = fmt == "onnx-int8"
        path = to_onnx(
            model,
            os.path.join(folder, "model_int8.onnx" if int8 else "model.onnx"),
            sample_inputs=sample_inputs,
            batch_size=1,
            quantization="int8" if int8 else None,
            representative_data=calibration if int8 else None,
            min_agreement=min_agreement,
        )
        name = "onnx int8 QDQ (ONNX Runtime)" if int8 else "onnx (ONNX Runtime)"
        return name, path, ONNXRunner
    quantization = None if fmt == "float32" else fmt
    name, filename = f"tflite {fmt} (LiteRT)", f"model_{fmt}.tflite"
    if fmt == "int8-qat":  # int8 of the QAT-fine-tuned copy
        quantization = "int8"
        name, filename = f"tflite int8 QAT {qat_epochs} ep (LiteRT)", "model_int8_qat.tflite"
    path = to_tflite(
        model,
        os.path.join(folder, filename),
        quantization=quantization,
        representative_data=calibration,
        sample_inputs=sample_inputs,
        min_agreement=min_agreement,
    )
    return name, path, TFLiteRunner


def report_row(name, path, outputs, run_with_threads, reference, labels, image, runs, size_mb=None):
    """One row of the report.

    Args:
        name: the format's name.
        path: its file (None for the Keras reference, with `size_mb`).
        outputs: its outputs (N, classes) on the held-out images.
        run_with_threads: `threads -> callable(images)`, timed on `image`.
        reference: the Keras outputs (N, classes) on the same images.
        labels: (N,) int held-out labels, or None.
        image: (1, H, W, C) the batch the latency is measured on.
        runs: timed runs per latency figure.
        size_mb: the size in MB; defaults to the file's.

    Returns:
        A dict: "format", "file", "size_mb", "max_abs_diff",
        "top1_agreement", "accuracy" (None without labels), "latency_ms_1t",
        "latency_ms_2t", "accelerators" (`mobile_checks.verdict`; "n/a"
        without a file).
    """
    return {
        "format": name,
        "file": path,
        "size_mb": size_mb if size_mb is not None else os.path.getsize(path) / 1e6,
        "max_abs_diff": float(np.abs(outputs - reference).max()),
        "top1_agreement": float((outputs.argmax(-1) == reference.argmax(-1)).mean()),
        "accuracy": None if labels is None else float((outputs.argmax(-1) == labels).mean()),
        "latency_ms_1t": median_latency_ms(run_with_threads(1), image, runs),
        "latency_ms_2t": median_latency_ms(run_with_threads(2), image, runs),
        "accelerators": "n/a" if path is None else mobile_checks.verdict(path),
    }


def report_table(rows, failures, title):
    """The report as a Markdown table under `title`; failed formats last."""
    lines = [
        title,
        "",
        "| format | size (MB) | max abs diff vs Keras | top-1 agreement | accuracy "
        "| latency 1 thread (ms) | latency 2 threads (ms) | accelerators (checkers) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(
            f"| {r['format']} | {r['size_mb']:.2f} | {r['max_abs_diff']:.2e} | "
            f"{r['top1_agreement']:.4f} | {accuracy} | {r['latency_ms_1t']:.2f} | "
            f"{r['latency_ms_2t']:.2f} | {r.get('accelerators', 'n/a')} |"
        )
    for fmt, reason in failures.items():
        lines.append(f"| {fmt} | failed: {reason.splitlines()[0][:200]} | | | | | | |")
    return "\n".join(lines)


def write_report(folder, table, rows, failures):
    """Writes `report.md` (the table) and `report.json` (rows and failures); returns
    the path of `report.md`."""
    path = os.path.join(folder, "report.md")
    _write_text(path, table + "\n")
    _write_text(
        os.path.join(folder, "report.json"),
        json.dumps({"rows": rows, "failures": failures}, indent=2),
    )
    return path


def _write_text(path, text):
    """Whole or not at all: a failed write (a full disk) keeps the old file and
    leaves no temporary."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
