"""TFLite export: `to_tflite`, float32 / float16 / dynamic / int8 / int8-full / int16x8.

Each file is converted, written under a temporary name, loaded back in the
LiteRT interpreter and compared with the Keras model on sample inputs before
it reaches the user's path. The files use builtin ops only (no Flex), which
`keras_sepvit.export.tflite_ops` lets you check.

TFLite files are converted from `keras_sepvit.export.inference.inference_model`:
static batch 1 by default, input normalisation folded into the stem
convolution, attention scale folded into the queries (exact). The TFLite
quantization modes, and which to pick:

| mode | what is int8 | for | input / output |
|---|---|---|---|
| None ("float32") | nothing | reference; GPU delegates | float32 |
| "float16" | nothing (float16 weights) | GPU delegates | float32 |
| "dynamic" | weights of matrix ops; activations per inference | CPU, no calibration | float32 |
| "int8" | matrix ops, data movement (zero points 0) | CPU (XNNPACK): the fast one | float32 |
| "int8-full" | every op, int8 input and output | integer-only NPUs / DSPs | int8 |
| "int16x8" | weights int8, activations int16 | accuracy-critical integer NPUs | float32 |

See `keras_sepvit.export.tflite_quantization` for the "int8" recipe and why.
"""

import contextlib
import io
import os
import re
import subprocess
import sys

import keras

from keras_sepvit.export import (
    checks,
    dense_quantization,
    inference,
    mask_rcnn,
    signatures,
    tflite_quantization,
)
from keras_sepvit.export.runtimes import TFLiteRunner, tflite_ops
from keras_sepvit.layers import SeparableSelfAttention
from keras_sepvit.tf_logging import converter_notices_dropped

QUANTIZATIONS = (None, "float32", "float16", "dynamic", "int8", "int8-full", "int16x8")
_CALIBRATED = ("int8", "int8-full", "int16x8")


_SMOKE_RUN = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
interpreter.invoke()
"""


def _smoke_run_in_subprocess(path):
    """Invokes a .tflite file once in a child process.

    LiteRT's quantized kernels can abort the whole process (no Python
    exception) on degenerate quantization ranges, e.g. an untrained model
    whose window tokens and biases are all zero. A child process turns that
    into a clear error instead of killing the caller.
    """
    result = subprocess.run(
        [sys.executable, "-c", _SMOKE_RUN, path], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        tail = (result.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(
            f"The LiteRT interpreter crashed running {path} (exit code {result.returncode}; "
            f"{' | '.join(tail) or 'no message'}). Quantized kernels abort on degenerate "
            "ranges, as in an untrained model with all-zero window tokens: quantize a "
            "trained model, with representative images from its training data."
        )


def float_attention_tensors(model, tensor_names):
    """The tensors of a converted QAT model that "int8" keeps in float32.

    (Models fine-tuned with `keras_sepvit.export.qat` are converted by the TFLite
    converter, which honours their trained fake-quantization ranges; other
    models go through `keras_sepvit.export.tflite_quantization`.)

    Everything inside the model's attention layers (`SeparableSelfAttention`)
    except matrix products: the score scaling, softmax, window-token concat,
    PWA's LayerNorm and GELU, and the reshapes between them. The matrix
    products (the qkv / proj FULLY_CONNECTED and the BATCH_MATMULs, named
    MatMul) stay int8, as do all convolutions, MLPs and block LayerNorms.
    """
    names = {
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, SeparableSelfAttention)
    }
    if not names:
        return []
    alternatives = "|".join(map(re.escape, sorted(names)))
    pattern = re.compile(rf"/({alternatives})(_\d+)?/")
    return [n for n in tensor_names if pattern.search(n) and "MatMul" not in n]


def _int8_with_float_attention(converter, model, representative_data):
    """int8 everywhere but the attention internals (`float_attention_tensors`).

    Measured on the digits model (float 98.33%): full integer int8 gave
    agreement 98.06% / accuracy 97.22%; int8 with float LayerNorms 97.50% /
    96.67%; int8 with float attention internals 99.44% / 98.61%, at the same
    latency. Built with the TFLite quantization debugger's selective
    quantization (`denylisted_nodes`) on the calibrated model.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    options = tf.lite.experimental.QuantizationDebugOptions(fully_quantize=True)
    sample = next(iter(checks.representative_dataset(representative_data, limit=1)()))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: iter([sample]), debug_options=options
    )
    calibrated = Interpreter(model_content=debugger.calibrated_model)
    names = [d["name"] for d in calibrated.get_tensor_details()]
    options.denylisted_nodes = float_attention_tensors(model, names)
    return debugger.get_nondebug_quantized_model()


def _check_int16_layer_norms(model):
    """int16x8 needs `keras_sepvit.layers.LayerNorm`: Keras' LayerNormalization
    converts to SQUARED_DIFFERENCE, which LiteRT cannot run in 16 bits."""
    legacy = [
        layer.path if hasattr(layer, "path") else layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer) is keras.layers.LayerNormalization
    ]
    if legacy:
        raise ValueError(
            "quantization='int16x8' needs keras_sepvit.layers.LayerNorm: LiteRT has no 16-bit "
            "kernel for the SQUARED_DIFFERENCE op of keras.layers.LayerNormalization. This "
            f"model has {len(legacy)} of those (e.g. {legacy[0]!r}; a model saved by "
            "keras-sepvit 0.1). Rebuild it with keras_sepvit and copy the weights: "
            "new = keras_sepvit.SepViTLite(...same arguments...); "
            "new.set_weights(model.get_weights())"
        )


def _head_layer_names(model):
    """Top-level Dense layers: the classifier head ("int8" keeps it dynamic-range)."""
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def _convert(converter_source, quantization, representative_data, qat_model):
    """The TFLite converter's bytes for float32/float16/int8-full/int16x8 and
    the QAT model's int8."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(converter_source)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":  # a QAT model: its fake-quant ranges, attention internals float
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = checks.representative_dataset(representative_data)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    elif quantization == "int8-full":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = checks.representative_dataset(representative_data)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif quantization == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = checks.representative_dataset(representative_data)
        # An op the converter knows has no 16x8 kernel stays a float32 builtin.
        ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    converter.target_spec.supported_ops = ops
    # Keras' SavedModel export prints every captured variable (about 1,500
    # "Captures" lines for SepViT-Lite): nothing a user acts on.
    # The converter's notices of normal work are dropped (tf_logging says which).
    with contextlib.redirect_stdout(io.StringIO()), converter_notices_dropped():
        if quantization == "int8":
            return _int8_with_float_attention(converter, qat_model, representative_data)
        return converter.convert()


def to_tflite(
    model,
    path,
    quantization=None,
    representative_data=None,
    sample_inputs=None,
    tolerance=None,
    batch_size=1,
    min_agreement=0.8,
):
    """Converts a Keras model to a builtin-ops-only .tflite file and checks it.

    Args:
        model: a Keras model with a static input shape (TensorFlow backend),
            or a Mask R-CNN (`keras_sepvit.tasks.mask_rcnn`): its whole
            predict graph, float32 only, checked by its detections
            (`keras_sepvit.export.mask_rcnn`; `tolerance` does not apply).
        path: output `.tflite` path.
        quantization: None or "float32", "float16", "dynamic", "int8",
            "int8-full" or "int16x8"; the module docstring's table says
            which to pick. "int8" is the fast CPU (XNNPACK) file: int8 matrix
            products and data movement with zero-point-0 activations, float
            LayerNorm/GELU/softmax, float32 input and output
            (`keras_sepvit.export.tflite_quantization`). A model fine-tuned with
            `keras_sepvit.export.qat` is converted by the TFLite converter with its
            trained ranges instead.
        representative_data: calibration images for "int8", "int8-full" and "int16x8": an
            array (N, H, W, C), a tf.data dataset of `(images, labels)`
            batches (e.g. from `keras_sepvit.data.make_dataset`), or an
            iterable of batches. Up to 200 images are used.
        sample_inputs: images to compare Keras and TFLite on; defaults to
            random images at the model's input size.
        tolerance: max |output difference| allowed in the check; defaults to
            1e-4 for float32 and 1e-2 for float16.
        min_agreement: for calibrated files ("int8", "int8-full", "int16x8"):
            the least agreement with Keras on (up to 32 of) the calibration
            images: top-1 for a classifier, per-pixel argmax for a segmenter,
            the fraction of Keras' decoded boxes found (IoU >= 0.5, same
            class) for a detector (`keras_sepvit.export.dense_quantization`);
            other outputs are held to a relative error of 1 - min_agreement
            / 2. A broken file (bad calibration) is an error, never left at
            `path` (a file already there is kept). 0 skips it.
        batch_size: the file's static batch (default 1, what a phone runs),
            or None for a dynamic batch (shape ops that XNNPACK does not
            run; about 10% slower at batch 1).

    Returns:
        The path of the file, after it was loaded and checked.

    Raises:
        ValueError: before any conversion, for an unknown `quantization`,
            missing, empty, non-finite, constant, mis-shaped or mis-scaled
            representative data, a bad `batch_size`, a path that cannot be
            written, or int16x8 of a model with Keras' own LayerNormalization.
        RuntimeError: when the written file fails its check (nothing is left
            at `path`).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if quantization == "float32":
        quantization = None
    if mask_rcnn.is_mask_rcnn(model):  # its whole predict graph, float32
        mask_rcnn.check_arguments(quantization, batch_size, (1, None))
    if quantization in _CALIBRATED and representative_data is None:
        raise ValueError(
            f"quantization={quantization!r} calibrates activation ranges and needs "
            "`representative_data` (e.g. a few hundred training images). Received: None"
        )
    checks.check_batch_size(batch_size)
    path = checks.check_output_path(path, ".tflite")
    if mask_rcnn.is_mask_rcnn(model):
        source, images = mask_rcnn.export_model(model), None
    else:
        source, images = _source(model, quantization, representative_data, batch_size)
    qat_model = inference.has_fake_quantization(model)
    # Written and checked under a temporary name: a file that fails its
    # check never sits at `path`.
    tmp = path + ".unchecked.tflite"
    try:
        if quantization in ("int8", "dynamic") and not qat_model:
            _quantize(source, model, quantization, images, tmp)
            if quantization == "int8" and tflite_quantization.unbounded_exponents(tmp):
                # Scores calibrated beyond +-80: exp() could overflow, so softmax.
                source, _ = _source(model, quantization, None, batch_size, bounded=False)
                _quantize(source, model, quantization, images, tmp)
        else:
            _write_bytes(_convert(source, quantization, images, model), tmp)
        _check_tflite(tmp, model, quantization, sample_inputs, tolerance, images, min_agreement)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".float"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


def _quantize(source, model, quantization, images, tmp):
    """`tmp`: the float file of `source`, quantized by ai-edge-quantizer."""
    _write_bytes(_convert(source, None, None, None), tmp + ".float")
    with converter_notices_dropped():  # the quantizer runs LiteRT to calibrate
        if quantization == "dynamic":
            tflite_quantization.quantize_dynamic(
                tmp + ".float", tmp, stem_names=inference.stem_names(source)
            )
            return
        pixel_stem = inference.space_to_depth_stem_names(source)  # [pad, rearrange, conv]
        tflite_quantization.quantize_int8_xnnpack(
            tmp + ".float",
            tmp,
            images,
            head_names=_head_layer_names(model),
            stem_names=inference.stem_names(source),
            asymmetric_names=pixel_stem,
            pixel_names=pixel_stem[:-1],  # what moves raw pixels: all but the convolution
            float_tensors=(
                dense_quantization.output_tail_names(tmp + ".float")
                if dense_quantization.is_dense(model)
                else ()
            ),
        )


def _source(model, quantization, representative_data, batch_size, bounded=True):
    """The model to convert (`inference.inference_model`; "int8" with a
    space-to-depth stem, and exp-then-normalise attention unless `bounded`
    is False) and the checked
    calibration images (None unless calibrated and given)."""
    signatures.static_input_shape(model)
    if quantization == "int16x8":
        _check_int16_layer_norms(model)
    images = None
    if quantization in _CALIBRATED and representative_data is not None:
        images = checks.calibration_images(representative_data, model)
    # keras-hub models (tasks, backbones) are not cloned: a clone of some
    # tasks orders its weights differently (DeepLabV3ImageSegmenter), so they
    # go unfolded (the folds are exact rewrites, not needed for correctness).
    source = inference.inference_model(
        model,
        batch_size,
        fold=not signatures.is_keras_hub(model),
        bounded_scores=bounded and quantization == "int8",
        space_to_depth_stem=quantization == "int8",
    )
    if signatures.output_keys(model) is not None:  # named outputs in the file
        source = signatures.named_outputs(source, batch_size)
    return source, images


def _check_tflite(path, model, quantization, sample_inputs, tolerance, images, min_agreement):
    """Runs the file and compares it with Keras; raises RuntimeError if it is wrong."""
    if quantization in _CALIBRATED:
        _smoke_run_in_subprocess(path)
    flex = sorted(op for op in tflite_ops(path) if op.startswith("Flex"))
    if flex:
        raise RuntimeError(f"{path} needs Flex ops {flex}; the LiteRT interpreter cannot run it")
    if mask_rcnn.is_mask_rcnn(model):
        mask_rcnn.check_file(path, TFLiteRunner(path), model, sample_inputs)
        return
    x = checks.sample_inputs(model, sample_inputs)
    default = {None: 1e-4, "float16": 1e-2}.get(quantization)
    runner = TFLiteRunner(path)  # one interpreter for both checks
    checks.compare(path, runner(x), signatures.keras_outputs(model, x), model, tolerance, default)
    if images is not None and min_agreement > 0:
        check = images[:32]
        dense_quantization.agreement_check(
            path,
            model,
            runner(check),
            signatures.keras_outputs(model, check),
            min_agreement,
        )


def _write_bytes(blob, path):
    # One-axis TILEs (FPN nearest upsampling) as CONCATENATION, which XNNPACK runs.
    blob = dense_quantization.replace_tiles(blob)
    with open(path, "wb") as f:
        f.write(blob)
