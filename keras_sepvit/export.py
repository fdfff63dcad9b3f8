"""Edge export: TFLite (float32, float16, dynamic-range, int8, int16x8) and ONNX.

Each function converts, loads the file back in the runtime that will serve it
(LiteRT interpreter, ONNX Runtime), compares it with the Keras model on sample
inputs and returns the path. TensorFlow backend; the TFLite files use builtin
ops only (no Flex), which `tflite_ops` lets you check.

TFLite files are converted from `keras_sepvit.inference.inference_model`:
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

See `keras_sepvit.tflite_quantization` for the "int8" recipe and why.

Dense-prediction models export the same way (`tests/test_dense_export.py`):
a segmenter (`keras_sepvit.tasks.semantic_fpn.SemanticFPNSegmenter`,
keras-hub's `DeepLabV3ImageSegmenter`) gives per-pixel logits (B, H, W,
classes), checked by per-pixel argmax agreement and relative error; a
detector (keras-hub's `RetinaNetObjectDetector`) gives its raw head outputs
`{"bbox_regression": (B, anchors, 4), "cls_logits": (B, anchors, classes)}`
(named outputs in both files; `TFLiteRunner` and `ONNXRunner` return them as
a dict), checked by relative error. Anchor decoding and NMS are not in the
files (keras-hub's decoder is a Python loop over dynamic shapes): run
`keras_sepvit.tasks.retinanet.decode_detections` on the outputs.
"""

import contextlib
import io
import os
import re

import numpy as np

from keras_sepvit.runtimes import (  # noqa: F401 (public here since 0.1)
    ONNXRunner,
    TFLiteRunner,
    median_latency_ms,
    tflite_ops,
)

QUANTIZATIONS = (None, "float32", "float16", "dynamic", "int8", "int8-full", "int16x8")
_CALIBRATED = ("int8", "int8-full", "int16x8")


def _check_batch_size(batch_size):
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be a positive int or None (dynamic). "
            f"Received: batch_size={batch_size!r}"
        )


def _check_output_path(path, suffix):
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise ValueError(f"The output file must end with {suffix!r}. Received: path={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise ValueError(f"Cannot create the folder of path={path!r}: {err}") from err
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"Cannot write to path={path!r}: the folder or file is read-only")
    return path


def _static_input_shape(model):
    shape = tuple(model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            "Export needs a static input size (the edge runtimes plan memory for it). "
            f"Received: input_shape={model.input_shape}; rebuild the model with "
            "e.g. input_shape=(224, 224, 3) and set_weights()."
        )
    return shape


def _sample_inputs(model, sample_inputs):
    if sample_inputs is not None:
        return np.asarray(sample_inputs, "float32")
    shape = _static_input_shape(model)
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (2,) + shape).astype("float32")


def _output_keys(model):
    """The keys of a model's dict output (a detector's raw head outputs), else None."""
    import keras

    output = model.output if isinstance(model, keras.Model) else None
    return sorted(output) if isinstance(output, dict) else None


def _is_segmenter(model):
    """A keras-hub `ImageSegmenter` (per-pixel logits, checked per pixel)."""
    return any(cls.__name__ == "ImageSegmenter" for cls in type(model).__mro__)


def _is_keras_hub(model):
    return any(cls.__module__.startswith("keras_hub.") for cls in type(model).__mro__)


def _named_outputs(model, batch_size=None):
    """`model` with a static batch and its dict outputs as named graph outputs.

    The exported files then name their outputs by the Keras keys
    (`bbox_regression`, `cls_logits`), which the runners return as a dict.
    """
    import keras

    inputs = keras.Input(batch_shape=(batch_size,) + _static_input_shape(model), name="image")
    outputs = model(inputs)
    if isinstance(outputs, dict):
        outputs = {k: keras.layers.Identity(name=k)(outputs[k]) for k in sorted(outputs)}
    return keras.Model(inputs, outputs, name=f"{model.name}_export")


def keras_outputs(model, x, batch_size=8):
    """What the exported file must reproduce: `model`'s raw outputs on `x`.

    `model.predict` for a classifier or segmenter; for a model whose outputs
    are a dict (a keras-hub detector, whose `predict` decodes boxes), the
    network's raw outputs, as a dict of arrays.
    """
    import keras

    if _output_keys(model) is None:
        return np.asarray(model.predict(x, verbose=0, batch_size=batch_size))
    twin = keras.Model(model.inputs, model.outputs)  # plain Model.predict: no decoding
    outputs = twin.predict(x, verbose=0, batch_size=batch_size)
    if not isinstance(outputs, dict):
        outputs = dict(zip(sorted(model.output), outputs))
    return {k: np.asarray(v) for k, v in outputs.items()}


def _representative_dataset(data, limit=200):
    """A TFLite representative-dataset generator from arrays, a tf.data dataset,
    or an iterable of batches."""

    def generator():
        count = 0
        iterable = data
        if hasattr(data, "unbatch"):  # tf.data: feed images one at a time
            iterable = data.unbatch().as_numpy_iterator()
        for item in iterable:
            image = item[0] if isinstance(item, (tuple, list)) else item
            image = np.asarray(image, "float32")
            batch = image[None] if image.ndim == 3 else image
            for single in batch:
                yield [single[None]]
                count += 1
                if count >= limit:
                    return

    return generator


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
    import subprocess
    import sys

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

    (Models fine-tuned with `keras_sepvit.qat` are converted by the TFLite
    converter, which honours their trained fake-quantization ranges; other
    models go through `keras_sepvit.tflite_quantization`.)

    Everything inside the model's attention layers (`SeparableSelfAttention`)
    except matrix products: the score scaling, softmax, window-token concat,
    PWA's LayerNorm and GELU, and the reshapes between them. The matrix
    products (the qkv / proj FULLY_CONNECTED and the BATCH_MATMULs, named
    MatMul) stay int8, as do all convolutions, MLPs and block LayerNorms.
    """
    from keras_sepvit.layers import SeparableSelfAttention

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
    sample = next(iter(_representative_dataset(representative_data, limit=1)()))
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
    import keras

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
    import keras

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
        converter.representative_dataset = _representative_dataset(representative_data)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    elif quantization == "int8-full":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(representative_data)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif quantization == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(representative_data)
        # An op the converter knows has no 16x8 kernel stays a float32 builtin.
        ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    converter.target_spec.supported_ops = ops
    # Keras' SavedModel export prints every captured variable (about 1,500
    # "Captures" lines for SepViT-Lite): nothing a user acts on.
    with contextlib.redirect_stdout(io.StringIO()):
        if quantization == "int8":
            return _int8_with_float_attention(converter, qat_model, representative_data)
        return converter.convert()


def _takes_raw_pixels(model):
    """Whether the model normalises [0, 255] RGB inside (a SepViT built with
    `include_preprocessing=True`)."""
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == "normalization" and isinstance(layer, keras.layers.Rescaling):
            return True
    return False


def _calibration_images(representative_data, model=None, limit=200):
    """The calibration images as one (N, H, W, C) float32 array, validated.

    A broken calibration set gives a quantized file that runs but is wrong
    (top-1 agreement with Keras of 0.0-0.56 was measured for NaN, all-zero
    and [0, 1]-scaled images), so it is refused here, before any work.
    """
    try:
        batches = [b[0] for b in _representative_dataset(representative_data, limit)()]
    except (TypeError, ValueError) as err:
        raise ValueError(
            "`representative_data` must be an array (N, H, W, C), a tf.data dataset of "
            f"(images, labels) batches or an iterable of image batches. Received: {err}"
        ) from err
    if not batches:
        raise ValueError(
            "`representative_data` holds no images; give a few hundred training images. "
            "Received: 0 images"
        )
    images = np.concatenate(batches)
    if model is not None:
        expected = tuple(model.input_shape[1:])
        if images.shape[1:] != expected:
            raise ValueError(
                f"Calibration images must have the model's input shape {expected}. "
                f"Received: images of shape {images.shape[1:]}"
            )
    finite = np.isfinite(images)
    if not finite.all():
        bad = int((~finite).reshape(len(images), -1).any(-1).sum())
        values = images[finite]
        seen = f"min={values.min()}, max={values.max()}" if values.size else "no finite value"
        raise ValueError(
            f"`representative_data` holds non-finite values (NaN or inf) in {bad} of "
            f"{len(images)} images. Received: {seen} among the finite ones"
        )
    low, high = float(images.min()), float(images.max())
    if high - low < 1e-6:
        raise ValueError(
            "`representative_data` is constant (every pixel the same): calibration "
            f"ranges would be degenerate. Received: all values {low}"
        )
    # [0, 1]-scaled images reach at most 1, ImageNet-normalised ones about 2.6.
    if model is not None and _takes_raw_pixels(model) and high <= 3.0:
        raise ValueError(
            "This model normalises [0, 255] RGB inside (include_preprocessing=True), but "
            "`representative_data` is not in that range (scaled to [0, 1] or normalised "
            f"already?). Received: min={low:.4g}, max={high:.4g}; pass the images as the "
            "model receives them at inference."
        )
    return images


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
        model: a Keras model with a static input shape (TensorFlow backend).
        path: output `.tflite` path.
        quantization: None or "float32", "float16", "dynamic", "int8",
            "int8-full" or "int16x8"; the module docstring's table says
            which to pick. "int8" is the fast CPU (XNNPACK) file: int8 matrix
            products and data movement with zero-point-0 activations, float
            LayerNorm/GELU/softmax, float32 input and output
            (`keras_sepvit.tflite_quantization`). A model fine-tuned with
            `keras_sepvit.qat` is converted by the TFLite converter with its
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
            the least top-1 agreement with Keras on (up to 32 of) the
            calibration images (for a classifier; other outputs are held to a
            relative error of 1 - min_agreement / 2). A broken file (bad
            calibration) is an error, never left at `path`. 0 skips it.
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
    if quantization in _CALIBRATED and representative_data is None:
        raise ValueError(
            f"quantization={quantization!r} calibrates activation ranges and needs "
            "`representative_data` (e.g. a few hundred training images). Received: None"
        )
    _check_batch_size(batch_size)
    path = _check_output_path(path, ".tflite")
    _static_input_shape(model)
    if quantization == "int16x8":
        _check_int16_layer_norms(model)
    images = None
    if quantization in _CALIBRATED:
        images = _calibration_images(representative_data, model)
    from keras_sepvit import inference, tflite_quantization

    # keras-hub models (tasks, backbones) are not cloned: a clone of some
    # tasks orders its weights differently (DeepLabV3ImageSegmenter), so they
    # go unfolded (the folds are exact rewrites, not needed for correctness).
    source = inference.inference_model(model, batch_size, fold=not _is_keras_hub(model))
    if _output_keys(model) is not None:  # named outputs in the file
        source = _named_outputs(source, batch_size)
    qat_model = inference._has_fake_quantization(model)
    # Written and checked under a temporary name: a file that fails its
    # check never sits at `path`.
    tmp = path + ".unchecked.tflite"
    try:
        if quantization in ("int8", "dynamic") and not qat_model:
            _write_bytes(_convert(source, None, None, None), tmp + ".float")
            if quantization == "dynamic":
                tflite_quantization.quantize_dynamic(
                    tmp + ".float", tmp, stem_names=inference.stem_names(source)
                )
            else:
                tflite_quantization.quantize_int8_xnnpack(
                    tmp + ".float",
                    tmp,
                    images,
                    head_names=_head_layer_names(model),
                    stem_names=inference.stem_names(source),
                )
        else:
            _write_bytes(_convert(source, quantization, images, model), tmp)
        _check_tflite(tmp, model, quantization, sample_inputs, tolerance, images, min_agreement)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".float"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


# Least per-pixel argmax agreement of a float (float32 / float16) segmenter
# file with Keras: rounding may flip near-ties, a wrong graph flips most pixels.
FLOAT_PIXEL_AGREEMENT = 0.99


def _parts(outputs):
    return outputs if isinstance(outputs, dict) else {"output": outputs}


def _relative_error(got, expected):
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-12))


def _pixel_agreement(got, expected):
    return float((got.argmax(-1) == expected.argmax(-1)).mean())


def _agreement_check(name, got, expected, min_agreement, segmenter=False):
    """Top-1 agreement of a quantized classifier with Keras, per-pixel argmax
    agreement of a segmenter, or the relative error of other outputs (feature
    maps, a detector's raw outputs)."""
    if segmenter:
        agreement = _pixel_agreement(got, expected)
        if agreement < min_agreement:
            raise RuntimeError(
                f"{name} agrees with the Keras model on the class of only {agreement:.1%} of "
                f"the pixels of {len(got)} calibration images (< min_agreement={min_agreement}):"
                " the quantized file is broken. Check the calibration images."
            )
        return
    if not isinstance(expected, dict) and expected.ndim == 2 and expected.shape[-1] > 1:
        agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
        if agreement < min_agreement:
            raise RuntimeError(
                f"{name} agrees with the Keras model on the top-1 class of only "
                f"{agreement:.0%} of {len(got)} calibration images (< min_agreement="
                f"{min_agreement}): the quantized file is broken. Check the calibration "
                "images (the model's input range, real training images)."
            )
        return
    got, expected = _parts(got), _parts(expected)
    for key in expected:
        error = _relative_error(got[key], expected[key])
        if error > 1.0 - min_agreement / 2:
            raise RuntimeError(
                f"{name} differs from the Keras model by a relative error of {error:.2f} on "
                f"the calibration images ({key}): the quantized file is broken."
            )


def _compare(name, got, expected, model, tolerance, default_tolerance):
    """Checks a file's outputs against Keras' on the sample inputs.

    Classifiers: max |difference| <= tolerance (default `default_tolerance`).
    Dense tasks (segmenters, dict outputs) without an explicit `tolerance`:
    relative error <= `default_tolerance` per output, and for a segmenter
    per-pixel argmax agreement >= `FLOAT_PIXEL_AGREEMENT`.
    """
    got_parts, expected_parts = _parts(got), _parts(expected)
    if sorted(got_parts) != sorted(expected_parts):
        raise RuntimeError(
            f"{name} has outputs {sorted(got_parts)}, the Keras model {sorted(expected_parts)}"
        )
    for key, value in expected_parts.items():
        out = np.asarray(got_parts[key])
        if not np.isfinite(out).all() or out.shape != value.shape:
            raise RuntimeError(f"{name} gives non-finite or mis-shaped outputs {out.shape}")
    dense = _is_segmenter(model) or isinstance(expected, dict)
    if tolerance is None and dense:
        if default_tolerance is None:
            return
        for key, value in expected_parts.items():
            error = _relative_error(got_parts[key], value)
            if error > default_tolerance:
                raise RuntimeError(
                    f"{name} differs from the Keras model by a relative error of {error:.2e} "
                    f"({key}) > {default_tolerance}"
                )
        if _is_segmenter(model):
            agreement = _pixel_agreement(got, expected)
            if agreement < FLOAT_PIXEL_AGREEMENT:
                raise RuntimeError(
                    f"{name} agrees with the Keras model on the class of only {agreement:.2%} "
                    f"of the pixels (< {FLOAT_PIXEL_AGREEMENT})"
                )
        return
    tolerance = default_tolerance if tolerance is None else tolerance
    if tolerance is not None:
        diff = max(float(np.abs(got_parts[k] - v).max()) for k, v in expected_parts.items())
        if diff > tolerance:
            raise RuntimeError(
                f"{name} differs from the Keras model by {diff:.2e} > tolerance {tolerance}"
            )


def _check_tflite(path, model, quantization, sample_inputs, tolerance, images, min_agreement):
    """Runs the file and compares it with Keras; raises RuntimeError if it is wrong."""
    if quantization in _CALIBRATED:
        _smoke_run_in_subprocess(path)
    flex = sorted(op for op in tflite_ops(path) if op.startswith("Flex"))
    if flex:
        raise RuntimeError(f"{path} needs Flex ops {flex}; the LiteRT interpreter cannot run it")
    x = _sample_inputs(model, sample_inputs)
    default = {None: 1e-4, "float16": 1e-2}.get(quantization)
    _compare(path, TFLiteRunner(path)(x), keras_outputs(model, x), model, tolerance, default)
    if images is not None and min_agreement > 0:
        check = images[:32]
        _agreement_check(
            path,
            TFLiteRunner(path)(check),
            keras_outputs(model, check),
            min_agreement,
            segmenter=_is_segmenter(model),
        )


def _write_bytes(blob, path):
    with open(path, "wb") as f:
        f.write(blob)


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

    shape = (batch_size,) + _static_input_shape(model)
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    optimizers = {
        name: cls
        for name, cls in optimizer._get_optimizers().items()
        if name != "optimize_transpose"
    }
    return spec, optimizers


ONNX_QUANTIZATIONS = (None, "float32", "int8")


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
):
    """Converts a Keras model to ONNX with tf2onnx and checks it in ONNX Runtime.

    The model's exact GELU is written with `erf` (ONNX `Erf`), never `Erfc`,
    which tf2onnx cannot convert. The graph is then rewritten for ONNX
    Runtime (`keras_sepvit.onnx_graph.optimize`): LayerNorm as ONNX
    `LayerNormalization`, GELU in the form ORT fuses to one `Gelu` kernel,
    and, with a static batch, one projection per q/k/v instead of slicing a
    fused qkv, Dense layers as `Gemm`, fewer copies around the window tokens.
    The file passes `onnx.checker`; its input is `image` (N, H, W, C)
    float32.

    Args:
        model: a Keras model with a static input size (TensorFlow backend).
        path: output `.onnx` path.
        opset: int in [13, 18] (18: the newest tf2onnx 1.17 writes). ONNX
            `LayerNormalization` needs >= 17 (below, LayerNorm stays
            elementwise). Defaults to 17.
        sample_inputs: images to compare Keras and ONNX Runtime on; defaults
            to random images at the model's input size.
        tolerance: max |output difference| allowed in the check; defaults to
            1e-4 for float32; an int8 file is checked to run and give finite
            outputs (its accuracy is measured by the export report).
        batch_size: the file's static batch (e.g. 1: the shape arithmetic
            folds away and every rewrite applies; SepViT-Lite ran 0.93x the
            dynamic-batch file, 1 thread), or None (default) for a dynamic
            batch.
        quantization: None or "float32" (float file), or "int8": a QDQ file
            from ONNX Runtime's static quantization, the Dense layers' inputs
            int8, calibrated on `representative_data`
            (`keras_sepvit.onnx_graph.quantize_int8`).
        representative_data: calibration images for "int8": an array
            (N, H, W, C), a tf.data dataset of `(images, labels)` batches, or
            an iterable of batches. Up to 200 images are used.
        optimize: bool. Apply the ONNX Runtime rewrites. Defaults to True.

    Returns:
        The path of the file, after it was loaded in ONNX Runtime and compared
        with Keras.

    Raises:
        ValueError: before any conversion, for a bad `opset`, `batch_size` or
            `quantization`, int8 without `representative_data`, or a path
            that cannot be written.
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
    _check_batch_size(batch_size)
    path = _check_output_path(path, ".onnx")
    _static_input_shape(model)
    import onnx
    import tf2onnx

    from keras_sepvit import onnx_graph

    spec, optimizers = _onnx_function(model, batch_size)
    source = model if _output_keys(model) is None else _named_outputs(model, batch_size)
    proto, _ = tf2onnx.convert.from_keras(
        source, input_signature=spec, opset=opset, optimizers=optimizers
    )
    onnx.checker.check_model(proto)
    if optimize:
        onnx_graph.optimize(proto)
    op_types = {node.op_type for node in proto.graph.node}
    if "Erfc" in op_types:
        raise RuntimeError("the ONNX graph holds Erfc, which ONNX Runtime cannot run")
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    if quantization == "int8":
        images = _calibration_images(representative_data)
        step = batch_size or len(images)
        batches = [images[i : i + step] for i in range(0, len(images) - step + 1, step)]
        try:
            onnx_graph.quantize_int8(tmp, tmp + ".int8", batches, proto.graph.input[0].name)
            os.replace(tmp + ".int8", tmp)
        finally:
            if os.path.exists(tmp + ".int8"):
                os.remove(tmp + ".int8")
    os.replace(tmp, path)

    x = _sample_inputs(model, sample_inputs)
    default = 1e-4 if quantization in (None, "float32") else None
    _compare(path, ONNXRunner(path)(x), keras_outputs(model, x), model, tolerance, default)
    return path
