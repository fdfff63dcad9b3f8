"""Quantization recipes for LiteRT's CPU path (XNNPACK), with ai-edge-quantizer.

Why ai-edge-quantizer and not the TFLite converter's post-training
quantization: the converter calibrates every activation with an asymmetric
range (a non-zero zero point) and has no switch for symmetric ones. XNNPACK
only takes an int8 BATCH_MATMUL whose second operand has zero point 0; the
others fall back to TFLite's reference kernel, which made the converter's
int8 SepViT-Lite 1.7-2.4x slower than float32 (4/34 attention matmuls
delegated). ai-edge-quantizer (Google's LiteRT quantizer) quantizes a float
.tflite file per op type and per tensor-name regex, with symmetric
activation ranges, so the recipe below puts every matmul in XNNPACK.

The `"int8"` recipe (chosen by measurement; README "Edge export"):
- int8, symmetric (zero point 0) per-tensor activations and symmetric
  per-channel weights: FULLY_CONNECTED, the attention scores' BATCH_MATMUL
  (q k^T), CONV_2D, DEPTHWISE_CONV_2D and the data movement between them
  (TRANSPOSE, RESHAPE, CONCATENATION, PAD, STRIDED_SLICE), all run by
  XNNPACK;
- float32: the BATCH_MATMULs that weight an activation by the attention
  probabilities (probabilities @ v, and the window tokens' weighting of the
  windows: `activation_weighted_matmuls`). XNNPACK packs their right-hand
  operand, an activation, at every invoke, and its int8 kernels ran them
  slower than float32: on SepViT-Lite (1 thread, 224, one-op models, a
  Sapphire Rapids Xeon) these 17 products took 0.99 ms in int8 and 0.70 ms
  in float32 (the 64 windows' 64x1x50x32 product 0.157 vs 0.095 ms, the
  tokens' 1x4x4x1568 0.129 vs 0.030 ms), while the 17 q k^T products took
  0.54 ms in int8 and 0.72 ms in float32;
- float32 (XNNPACK float kernels): LayerNorm arithmetic (MEAN, SUB, MUL,
  RSQRT, ADD), GELU, SOFTMAX and the residual ADDs. Their int8 kernels are
  TFLite builtins outside XNNPACK (slower than float), and int8 residual
  ADDs cost more in QUANTIZE/DEQUANTIZE pairs than they saved (measured);
- the window attention as exp(scores) @ v / sum(exp(scores)) (the export
  copy's `SeparableSelfAttention.exp_then_normalise`): no max pass over the
  (tokens x tokens) scores and the division on the (tokens x head_dim)
  output, about 5% of the file. Exact, and safe because the int8 scores are
  clamped to their calibrated range: `unbounded_exponents` checks that it
  lies within +-80 and `to_tflite` falls back to softmax where it does not;
- the stem int8 as a space-to-depth rearrangement and a 2x2 convolution over
  48 channels (`inference_model(..., space_to_depth_stem=True)`: the same
  sums), with asymmetric activations (`asymmetric_names`): the raw pixels
  0..255 get scale 1, so integer pixels are exact. XNNPACK's int8
  convolution over 3 input channels took 0.46 ms against 0.22 ms in
  float32; the 2x2 one over 48 channels 0.08 ms (one-op models,
  `benchmarks/tflite_profile.py`), and the whole SepViT-Lite file ran about
  4% faster than with the float stem (1 thread, 224, Sapphire Rapids Xeon);
- the classifier head (top-level Dense layers) dynamic-range (int8 weights,
  activations quantized at run time): a calibrated output range clipped the
  logits.
The file keeps float32 input and output.

`"dynamic"`: int8 weights for the fully-connected layers and convolutions,
activations quantized per inference by XNNPACK's QD8 kernels (see
`quantize_dynamic`); no calibration.
"""

import contextlib
import io
import os
import re
import warnings

import numpy as np


def _symmetric_config(weight_granularity="CHANNELWISE", activation_symmetric=True):
    from ai_edge_quantizer import qtyping

    tensor = qtyping.TensorQuantizationConfig
    return qtyping.OpQuantizationConfig(
        activation_tensor_config=tensor(
            num_bits=8,
            symmetric=activation_symmetric,
            granularity=qtyping.QuantGranularity.TENSORWISE,
        ),
        weight_tensor_config=tensor(
            num_bits=8,
            symmetric=True,
            granularity=getattr(qtyping.QuantGranularity, weight_granularity),
        ),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
    )


# Op types that "int8" quantizes with symmetric activations.
INT8_MATRIX_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")
INT8_DATA_MOVEMENT_OPS = ("TRANSPOSE", "RESHAPE", "CONCATENATION", "PAD", "STRIDED_SLICE")


def _signature(float_path):
    """(signature key, its input's name, the input tensor's name) of a
    one-signature, one-input .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=float_path)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"Expected one signature in {float_path}. Received: {list(signatures)}")
    key = next(iter(signatures))
    inputs = signatures[key]["inputs"]
    if len(inputs) != 1:
        raise ValueError(f"Expected one input in {float_path}. Received: {inputs}")
    return key, inputs[0], interpreter.get_input_details()[0]["name"]


def _write(quantizer, calibration, out_path):
    with _quiet():
        result = quantizer.quantize(calibration, enable_progress_report=False)
    tmp = out_path + ".aeq.tmp"
    try:
        result.export_model(tmp, overwrite=True)
        os.replace(tmp, out_path)
    finally:  # a failed write (a full disk) leaves no temporary
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def _regex(names):
    return "|".join(f"(^|/){re.escape(n)}(_\\d+)?/" for n in names)


def _constant(model, tensor):
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    return data is not None and len(data) > 0


def activation_weighted_matmuls(float_path):
    """Output names of the BATCH_MATMULs of a .tflite file whose operands are
    both activations and whose right-hand one is not transposed (adj_y off):
    attention probabilities @ values. The "int8" recipe keeps them float32."""
    from keras_sepvit.export.profiling import op_type, read_model

    model = read_model(float_path)
    graph = model.subgraphs[0]
    names = []
    for op in graph.operators:
        if op_type(model, op) != "BATCH_MATMUL" or getattr(op.builtinOptions, "adjY", True):
            continue
        operands = [graph.tensors[i] for i in op.inputs]
        if not any(_constant(model, t) for t in operands):
            names.append(graph.tensors[op.outputs[0]].name.decode())
    return names


# |x| <= 80: exp(x) neither overflows nor underflows float32, nor do sums of
# it over fewer than 6,000 keys.
SCORE_BOUND = 80.0


def unbounded_exponents(path):
    """Output names of the EXP ops of a .tflite file whose input is not a
    dequantized int8 tensor within +-SCORE_BOUND. The "int8" file computes
    attention as exp(scores) @ v / sum(exp(scores)), without softmax's max
    pass (`keras_sepvit.layers.SeparableSelfAttention.exp_then_normalise`);
    that is safe only where the scores are int8, clamped to their range."""
    from keras_sepvit.export.profiling import _schema, op_type, read_model

    model = read_model(path)
    graph = model.subgraphs[0]
    producer = {t: op for op in graph.operators for t in op.outputs}
    unbounded = []
    for op in graph.operators:
        if op_type(model, op) != "EXP":
            continue
        dequantize = producer.get(op.inputs[0])
        kind = op_type(model, dequantize) if dequantize is not None else None
        bound = float("inf")
        if kind == "SUB" and dequantize.inputs[0] == dequantize.inputs[1]:
            bound = 0.0  # exp(x - x): a one-key attention's weight 1
        elif kind == "DEQUANTIZE":
            source = graph.tensors[dequantize.inputs[0]]
            q = source.quantization
            if source.type == _schema().TensorType.INT8 and q is not None and q.scale is not None:
                scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
                bound = max(abs((-128 - zero) * scale), abs((127 - zero) * scale))
        if bound > SCORE_BOUND:
            unbounded.append(graph.tensors[op.outputs[0]].name.decode())
    return unbounded


def quantize_int8_xnnpack(
    float_path,
    out_path,
    images,
    head_names=(),
    stem_names=(),
    float_tensors=(),
    asymmetric_names=(),
    pixel_names=(),
):
    """The "int8" recipe (module docstring) applied to a float .tflite file.

    Args:
        float_path: a float32 .tflite file (static batch 1).
        out_path: where the int8 file is written.
        images: calibration images, an array (N, H, W, C) in the model's input
            range, fed one at a time.
        head_names: Keras layer names of the classifier head (dynamic-range).
        stem_names: Keras layer names of the stem, kept float32.
        float_tensors: exact tensor names of ops kept float32 (a dense
            model's output tail: `keras_sepvit.export.dense_quantization`).
        asymmetric_names: Keras layer names of int8 ops whose activations
            get an asymmetric range (a space-to-depth stem).
        pixel_names: those of them that move raw pixels (the stem's padding
            and rearrangement): their range and the input's is widened to
            hold PIXEL_RANGE, so that no pixel a camera gives is clipped.
    """
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op_name = qtyping.TFLOperationName
    q = quantizer.Quantizer(float_path)
    for op in INT8_MATRIX_OPS + INT8_DATA_MOVEMENT_OPS:
        q.update_quantization_recipe(".*", op_name[op], _symmetric_config())
    weighted = activation_weighted_matmuls(float_path)
    if weighted:
        q.update_quantization_recipe(
            # an op's scope is its output names, each followed by ";"
            "^(" + "|".join(re.escape(n) for n in weighted) + ");",
            op_name.BATCH_MATMUL,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )
    if stem_names:
        for op in ("CONCATENATION", "PAD", "CONV_2D"):
            q.update_quantization_recipe(
                _regex(stem_names), op_name[op], algorithm_key=AlgorithmName.NO_QUANTIZE
            )
    if asymmetric_names:
        for op in INT8_MATRIX_OPS + INT8_DATA_MOVEMENT_OPS:
            q.update_quantization_recipe(
                _regex(asymmetric_names), op_name[op], _symmetric_config(activation_symmetric=False)
            )
    if head_names:
        q.add_dynamic_config(_regex(head_names), op_name.FULLY_CONNECTED, 8)
    if float_tensors:
        from keras_sepvit.export.dense_quantization import exact_names_regex

        for op in INT8_MATRIX_OPS + INT8_DATA_MOVEMENT_OPS:
            q.update_quantization_recipe(
                exact_names_regex(float_tensors),
                op_name[op],
                algorithm_key=AlgorithmName.NO_QUANTIZE,
            )
    key, input_name, input_tensor = _signature(float_path)
    images = np.asarray(images, "float32")
    with _quiet():  # a progress bar and a debugging-mode warning per call
        calibration = q.calibrate({key: [{input_name: image[None]} for image in images]})
    if pixel_names:
        _widen_to_pixels(calibration, input_tensor, _regex(pixel_names))
    return _write(q, calibration, out_path)


# Raw pixels, what a model that normalises inside takes (`checks.calibration_images`).
PIXEL_RANGE = (0.0, 255.0)


def _widen_to_pixels(calibration, input_tensor, pattern):
    """Widens, in place, the calibrated (min, max) of the input tensor and of
    the tensors whose names match `pattern` to hold PIXEL_RANGE."""
    low, high = PIXEL_RANGE
    for name, stats in calibration.items():
        if name == input_tensor or re.search(pattern, name + "/"):
            stats["min"] = np.minimum(stats["min"], np.float32(low))
            stats["max"] = np.maximum(stats["max"], np.float32(high))


@contextlib.contextmanager
def _quiet():
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        yield


def quantize_dynamic(float_path, out_path, stem_names=()):
    """int8 weights for FULLY_CONNECTED and CONV_2D, activations quantized at
    run time (XNNPACK's QD8 kernels); no calibration. DEPTHWISE_CONV_2D stays
    float32 (XNNPACK has no dynamically quantized depthwise kernel: the 4
    PEG convolutions ran outside it with ai-edge-quantizer's
    `dynamic_wi8_afp32`), and so does the stem."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op_name = qtyping.TFLOperationName
    q = quantizer.Quantizer(float_path)
    for op in ("FULLY_CONNECTED", "CONV_2D"):
        q.add_dynamic_config(".*", op_name[op], 8)
    if stem_names:
        q.update_quantization_recipe(
            _regex(stem_names), op_name.CONV_2D, algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    return _write(q, None, out_path)
