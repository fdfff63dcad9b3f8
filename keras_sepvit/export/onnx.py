"""ONNX export: `to_onnx`, a float32 or int8 (QDQ) file checked in ONNX Runtime.

tf2onnx converts the model; `keras_sepvit.export.onnx_graph` rewrites the
graph for ONNX Runtime; `quantize_int8` (ONNX Runtime's static quantizer)
writes the int8 file. The file is written under a temporary name, loaded
back in ONNX Runtime and compared with the Keras model before it replaces
anything at the user's path.
"""

import logging
import os

import numpy as np

from keras_sepvit.export import checks, dense_quantization, mask_rcnn, onnx_graph, signatures
from keras_sepvit.export.runtimes import ONNXRunner

ONNX_QUANTIZATIONS = (None, "float32", "int8")
# "cpu": the fastest graph for ONNX Runtime's CPU kernels; "mobile": one
# partition on NNAPI and CoreML MLProgram (`keras_sepvit.export.onnx_mobile`).
ONNX_TARGETS = ("cpu", "mobile")


def _onnx_function(model, batch_size=None):
    """The model as tf2onnx converts it: signature and conversion settings.

    tf2onnx's transpose optimizer is left out: it moves our LayerNorms into
    NCHW, where they reduce over axis 1 and ONNX Runtime can fuse neither
    them nor the GELUs (measured: 0 LayerNormalization and 0 Gelu fused in
    SepViT-Lite, against 39 and 17 without it). ONNX Runtime does its own
    layout work around the convolutions.
    """
    import tensorflow as tf
    from tf2onnx import optimizer

    shape = (batch_size,) + signatures.static_input_shape(model)
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    optimizers = {
        name: cls
        for name, cls in optimizer._get_optimizers().items()
        if name != "optimize_transpose"
    }
    return spec, optimizers


def to_onnx(
    model,
    path,
    opset=17,
    sample_inputs=None,
    tolerance=None,
    batch_size=None,
    quantization=None,
    representative_data=None,
    optimize=True,
    target="cpu",
    min_agreement=0.8,
):
    """Converts a Keras model to ONNX with tf2onnx and checks it in ONNX Runtime.

    The model's exact GELU is written with `erf` (ONNX `Erf`), never `Erfc`,
    which tf2onnx cannot convert. The graph is then rewritten for ONNX
    Runtime (`keras_sepvit.export.onnx_graph.optimize`): LayerNorm as ONNX
    `LayerNormalization`, GELU in the form ORT fuses to one `Gelu` kernel,
    and, with a static batch, one projection per q/k/v instead of slicing a
    fused qkv, Dense layers as `Gemm`, fewer copies around the window tokens.
    The file passes `onnx.checker`; its input is `image` (N, H, W, C)
    float32.

    Args:
        model: a Keras model with a static input size (TensorFlow backend),
            or a Mask R-CNN (`keras_sepvit.tasks.mask_rcnn`): its whole
            predict graph, float32, dynamic batch, target "cpu" only, checked
            by its detections (`keras_sepvit.export.mask_rcnn`; `tolerance`
            does not apply).
        path: output `.onnx` path.
        opset: int in [13, 18] (18: the newest tf2onnx 1.17 writes). ONNX
            `LayerNormalization` needs >= 17 (below, LayerNorm stays
            elementwise). Defaults to 17.
        sample_inputs: images to compare Keras and ONNX Runtime on; defaults
            to random images at the model's input size.
        tolerance: max |output difference| allowed in the check; defaults to
            1e-4 for float32; an int8 file is checked to run and give finite
            outputs, and against `min_agreement`.
        batch_size: the file's static batch (e.g. 1: the shape arithmetic
            folds away and every rewrite applies; SepViT-Lite ran 0.93x the
            dynamic-batch file, 1 thread), or None (default) for a dynamic
            batch.
        quantization: None or "float32" (float file), or "int8": a QDQ file
            from ONNX Runtime's static quantization, the Dense layers' inputs
            int8, calibrated on `representative_data` (`quantize_int8`).
        representative_data: calibration images for "int8": an array
            (N, H, W, C), a tf.data dataset of `(images, labels)` batches, or
            an iterable of batches. Up to 200 images are used.
        optimize: bool. Apply the ONNX Runtime rewrites. Defaults to True.
        min_agreement: for "int8", as `to_tflite`'s: the least agreement
            with Keras on (up to 32 of) the calibration images (top-1 for a
            classifier, per-pixel argmax for a segmenter, the fraction of
            Keras' decoded boxes found for a detector; other outputs a
            relative error of at most 1 - min_agreement / 2). A file below it
            is an error and never replaces a file at `path`. 0 skips it.
            Defaults to 0.8.
        target: "cpu" (default: the graph above, fastest on ONNX Runtime's
            CPU kernels) or "mobile": for ONNX Runtime Mobile on NNAPI
            (Android) and CoreML MLProgram (iOS), every op one both run, so
            ONNX Runtime's mobile checker finds one partition on each
            (`keras_sepvit.export.onnx_mobile`; checked before the file is
            written, `keras_sepvit.export.mobile_checks`). Static batch 1
            (batch_size None or 1), float32 only. `onnx_mobile.to_ort` then
            writes the `.ort` file ONNX Runtime Mobile loads.

    Returns:
        The path of the file, after it was loaded in ONNX Runtime and compared
        with Keras.

    Raises:
        ValueError: before any conversion, for a bad `opset`, `batch_size`,
            `quantization` or `target` (or "mobile" with a batch other than
            1 or with "int8"), a path that cannot be written, or int8 without
            `representative_data` or with calibration images that are empty,
            non-finite, constant, not at the model's input shape or not in
            the range the model takes (the check `to_tflite` runs,
            `keras_sepvit.export.checks.calibration_images`).
        RuntimeError: when the written file fails its check. Nothing is
            written at `path` until the file passed (a file already there is
            kept), and no temporary file is left.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 18:
        raise ValueError(
            "`opset` must be an int in [13, 18] (tf2onnx writes up to 18). "
            f"Received: opset={opset!r}"
        )
    if quantization not in ONNX_QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {ONNX_QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' calibrates activation ranges and needs "
            "`representative_data` (e.g. a few hundred training images). "
            "Received: representative_data=None"
        )
    checks.check_batch_size(batch_size)
    instance = mask_rcnn.is_mask_rcnn(model)  # its whole predict graph, float32
    if instance:
        mask_rcnn.check_arguments(quantization, batch_size, (None,), target)
    batch_size = _check_target(target, batch_size, quantization)
    path = checks.check_output_path(path, ".onnx")
    if not instance:
        signatures.static_input_shape(model)
    images = None
    if quantization == "int8":  # the check to_tflite runs: shape and range against the model
        images = checks.calibration_images(representative_data, model)
    import onnx
    import tf2onnx

    if instance:
        source = mask_rcnn.export_model(model)
    elif signatures.output_keys(model) is None:
        source = model
    else:
        source = signatures.named_outputs(model, batch_size)
    spec, optimizers = _onnx_function(source, batch_size)
    proto, _ = tf2onnx.convert.from_keras(
        source, input_signature=spec, opset=opset, optimizers=optimizers
    )
    onnx.checker.check_model(proto)
    if optimize:
        onnx_graph.optimize(proto)
    if target == "mobile":
        from keras_sepvit.export import onnx_mobile

        onnx_mobile.for_mobile(proto)
    op_types = {node.op_type for node in proto.graph.node}
    if "Erfc" in op_types:
        raise RuntimeError("the ONNX graph holds Erfc, which ONNX Runtime cannot run")
    # Written, quantized and checked under temporary names: a file that fails
    # never sits at `path` (a file already there is kept), and no temporary
    # is left behind, whatever fails (a full disk, calibration, the check).
    tmp = path + ".unchecked.onnx"
    try:
        onnx.save(proto, tmp)
        if quantization == "int8":
            step = batch_size or len(images)
            batches = [images[i : i + step] for i in range(0, len(images) - step + 1, step)]
            quantize_int8(
                tmp,
                tmp + ".int8",
                batches,
                proto.graph.input[0].name,
                op_types=dense_quantization.onnx_op_types(model),
                float_nodes=(
                    dense_quantization.onnx_output_tail(tmp)
                    if dense_quantization.is_dense(model)
                    else ()
                ),
            )
            os.replace(tmp + ".int8", tmp)
        if target == "mobile":
            _check_mobile_partitions(tmp)
        runner = ONNXRunner(tmp)  # one session for both checks
        if instance:
            mask_rcnn.check_file(path, runner, model, sample_inputs)
        else:
            x = checks.sample_inputs(model, sample_inputs)
            default = 1e-4 if quantization in (None, "float32") else None
            got, expected = runner(x), signatures.keras_outputs(model, x)
            checks.compare(path, got, expected, model, tolerance, default)
        if images is not None and min_agreement > 0:
            check = images[:32]
            got, expected = runner(check), signatures.keras_outputs(model, check)
            dense_quantization.agreement_check(path, model, got, expected, min_agreement)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".int8"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


def _check_target(target, batch_size, quantization):
    """Raises ValueError for a bad `target`; returns the file's batch size."""
    if not isinstance(target, str) or target not in ONNX_TARGETS:
        raise ValueError(f"`target` must be one of {ONNX_TARGETS}. Received: target={target!r}")
    if target != "mobile":
        return batch_size
    if batch_size not in (None, 1):
        raise ValueError(
            "target='mobile' writes a static batch of 1 (NNAPI needs static shapes, and "
            "phones run one image at a time): give batch_size=1 or None. "
            f"Received: batch_size={batch_size!r}"
        )
    if quantization == "int8":
        raise ValueError(
            "target='mobile' writes a float32 file: CoreML MLProgram runs no "
            "QuantizeLinear/DequantizeLinear (ONNX Runtime's list), so a QDQ file splits "
            "into many partitions there; NNAPI and CoreML run float files in float16 "
            "themselves. For integer NPUs ship to_tflite(..., quantization='int8-full'). "
            "Received: quantization='int8'"
        )
    return 1


def _check_mobile_partitions(path):
    """Raises RuntimeError unless ONNX Runtime's mobile checker finds one
    partition on NNAPI and one on CoreML MLProgram."""
    from keras_sepvit.export import mobile_checks

    found = mobile_checks.onnx_partitions(path)
    if any(info["partitions"] != 1 for info in found.values()):
        raise RuntimeError(
            "The target='mobile' graph does not run in one partition per accelerator "
            f"(ONNX Runtime's mobile checker): {found}; nothing was written"
        )


def quantize_int8(float_path, path, images, input_name, op_types=("Gemm",), float_nodes=()):
    """QDQ int8 copy of an optimized float ONNX file (ONNX Runtime's quantizer).

    Static quantization calibrated on `images` (min/max): the inputs of every
    `Gemm` (the Dense layers: qkv, projections, MLPs, classifier) become int8
    (uint8 activations, per-tensor symmetric int8 weights); their outputs
    stay float, and so do the convolutions, the attention score and value
    matrix products, LayerNorm, GELU and softmax. Measured on SepViT-Lite
    (1 thread, 224, onnxruntime 1.32, an AVX-512 VNNI CPU), interleaved with
    the float file: 0.80x its time. Alternatives measured the same way:
    Gemm outputs quantized too (Q/DQ pairs between ops; the GELUs no longer
    fuse) 1.07x float; convolutions int8 too 0.90x; int8 activations with
    per-channel weights 1.36x; every MatMul (the attention's activation x
    activation products too, as QLinearMatMul) 1.11x.

    Weights use 7 of their 8 bits (`reduce_range`): x86 CPUs without VNNI
    (AVX2, AVX-512 without VNNI) multiply uint8 x int8 through a saturating
    16-bit pair sum, and full-range weights overflowed it. On an AMD EPYC
    Zen 3 (AVX2), a tiny Semantic FPN's int8 file agreed with Keras on
    88.1% of pixels (98.4% with reduce_range, and its TFLite file 97.0%);
    UperNet 90.8% (99.1%).

    `op_types` are the op types made int8 (a dense model adds "Conv":
    `keras_sepvit.export.dense_quantization.onnx_op_types`), `float_nodes`
    the names of nodes kept float (a dense model's output tail).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(images)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: np.asarray(batch, "float32")}

    # ONNX Runtime logs its generic advice to run its pre-processing first (on
    # the root logger, twice); this recipe was chosen and measured on our own
    # rewritten graph (`onnx_graph`) without it, so the advice is not shown.
    advice = _DropRecords("pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(
            float_path,
            path,
            _Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=list(float_nodes),
            per_channel=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=True,  # 7-bit weights: no saturation without VNNI (above)
            extra_options={
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": ["Gemm"],
            },
        )
    finally:
        logging.getLogger().removeFilter(advice)


class _DropRecords(logging.Filter):
    """Drops log records whose message contains `text`."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def filter(self, record):
        return self.text not in record.getMessage()
