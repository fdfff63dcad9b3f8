"""Quantized detectors and segmenters: what their int8 files need beyond a classifier's.

`to_tflite(..., quantization="int8")` and `to_onnx(..., quantization="int8")`
use these for dense models (a segmenter's per-pixel logits, a detector's raw
`bbox_regression` / `cls_logits`):

- `replace_tiles`: nearest upsampling in FPNs (`ops.repeat`, keras'
  `UpSampling2D`) converts to TFLite `TILE`, which XNNPACK does not run (the
  float and int8 files of Semantic FPN and RetinaNet left 4-6 nodes outside
  it). A `TILE` that repeats one axis is a `CONCATENATION` of copies of its
  input along that axis: same numbers, and XNNPACK takes it, float or int8.
- `output_tail_names` / `onnx_output_tail`: what stays float. Each graph
  output back to (and with) the last matrix op on its path: a segmenter's
  classifier convolution and its upsampling, a detector's box and class
  logit convolutions and their reshapes and concatenation. An int8 logit
  layer rounds scores that the argmax and the NMS order compare, and the
  detector's per-level int8 outputs, concatenated, need requantization ops
  XNNPACK does not run. The tail is a few output channels: its float time is small.
- `onnx_op_types`: ONNX Runtime's quantizer takes the convolutions of a
  dense model too (its FPN and heads are convolutions), not only `Gemm`.
- `agreement_check`: a quantized file against Keras on the calibration
  images. Segmenters: per-pixel argmax agreement. Detectors: box agreement
  (`box_agreement`: the fraction of Keras' decoded boxes that the file's
  decoded boxes match at IoU >= 0.5 with the same class), or, when Keras
  finds no box on those images (an untrained detector), the relative
  error of the raw outputs. Classifiers: top-1 agreement
  (`keras_sepvit.export.checks.agreement_check`).
"""

import os
import re

import numpy as np

from keras_sepvit.export import checks
from keras_sepvit.export.signatures import is_segmenter, output_keys

DETECTOR_OUTPUTS = ["bbox_regression", "cls_logits"]
# Ops the output tail walks back to (included): the last matrix products.
_MATRIX_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")
_ONNX_MATRIX_OPS = ("Conv", "Gemm", "MatMul")


def is_detector(model):
    """A keras-hub RetinaNet-like detector: raw `bbox_regression` / `cls_logits`
    outputs and an anchor generator (its boxes decode with
    `keras_sepvit.tasks.retinanet.decode_detections`)."""
    return output_keys(model) == DETECTOR_OUTPUTS and hasattr(model, "anchor_generator")


def is_dense(model):
    """A segmenter or a detector (dict outputs)."""
    return is_segmenter(model) or output_keys(model) is not None


# -- TFLite: TILE -> CONCATENATION ------------------------------------------


def replace_tiles(blob):
    """`blob` (.tflite bytes) with every one-axis TILE as a CONCATENATION.

    TILE(x, multiples) with one multiple m > 1 at axis a equals the
    concatenation of m copies of x along a. TILEs with several repeated axes
    (or non-constant multiples) are left as they are. Bytes without a TILE
    come back unchanged.
    """
    from keras_sepvit.export import profiling

    schema = profiling._schema()
    raw = schema.Model.GetRootAs(blob, 0)
    model = schema.ModelT.InitFromObj(raw)
    codes = model.operatorCodes or []
    tile = schema.BuiltinOperator.TILE
    if not any(max(c.builtinCode, c.deprecatedBuiltinCode) == tile for c in codes):
        return blob
    concat = schema.BuiltinOperator.CONCATENATION
    index = next(
        (i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) == concat),
        None,
    )
    changed = 0
    for graph in model.subgraphs:
        for op in graph.operators:
            code = codes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != tile:
                continue
            multiples = graph.tensors[op.inputs[1]]
            data = model.buffers[multiples.buffer].data if multiples.buffer else None
            if data is None or not len(data):
                continue
            dtype = "int64" if multiples.type == schema.TensorType.INT64 else "int32"
            values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype)
            repeated = np.flatnonzero(values > 1)
            if len(repeated) != 1:
                continue
            if index is None:
                new = schema.OperatorCodeT()
                new.builtinCode = new.deprecatedBuiltinCode = concat
                new.version = 1
                codes.append(new)
                index = len(codes) - 1
            options = schema.ConcatenationOptionsT()
            options.axis = int(repeated[0])
            op.opcodeIndex = index
            op.inputs = [op.inputs[0]] * int(values[repeated[0]])
            op.builtinOptionsType = schema.BuiltinOptions.ConcatenationOptions
            op.builtinOptions = options
            changed += 1
    if not changed:
        return blob
    model.operatorCodes = codes
    model.buffers = [profiling._AlignedBufferT(b.data) for b in model.buffers]
    return profiling._pack(model)


def output_tail_names(float_path):
    """Names of the tensors from each output of a .tflite file back to (and
    with) the last matrix op on its path: the ops "int8" keeps float."""
    from keras_sepvit.export import profiling

    model = profiling.read_model(float_path)
    graph = model.subgraphs[0]
    producer = {t: op for op in graph.operators for t in op.outputs}
    names, stack, seen = [], list(graph.outputs), set()
    while stack:
        op = producer.get(stack.pop())
        if op is None or id(op) in seen:
            continue
        seen.add(id(op))
        names.extend(_name(graph.tensors[t].name) for t in op.outputs)
        if profiling.op_type(model, op) not in _MATRIX_OPS:
            stack.extend(t for t in op.inputs if t >= 0 and not graph.tensors[t].buffer)
    return names


def _name(name):
    return name.decode() if isinstance(name, bytes) else name


def exact_names_regex(names):
    """A regex matching an ai-edge-quantizer op scope (its output names,
    ';'-joined) that holds one of `names` exactly."""
    return "|".join(f"(^|;){re.escape(n)}($|;)" for n in names)


# -- ONNX ---------------------------------------------------------------------


def onnx_op_types(model):
    """Op types ONNX Runtime's quantizer makes int8: `Gemm` (the Dense
    layers), and `Conv` too for a dense model (FPN and heads)."""
    return ["Gemm", "Conv"] if is_dense(model) else ["Gemm"]


def onnx_output_tail(path):
    """Names of the nodes from each output of an .onnx file back to (and with)
    the last Conv / Gemm / MatMul on its path: kept float."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer}
    names, stack = [], [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in names:
            continue
        names.append(node.name)
        if node.op_type not in _ONNX_MATRIX_OPS:
            stack.extend(i for i in node.input if i and i not in constants)
    return names


# -- agreement ------------------------------------------------------------------


def _iou(a, b):
    """(n, m) IoU of xyxy boxes a (n, 4) and b (m, 4)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matched_pairs(reference, found, iou_threshold=0.5):
    """The (reference index, found index) pairs of `reference` boxes (one
    image's boxes and labels, best first) that a box of `found` matches, one
    to one (greedy, best IoU first), at IoU >= `iou_threshold` with the same
    class."""
    boxes, labels = reference
    other_boxes, other_labels = found
    if not len(boxes) or not len(other_boxes):
        return []
    iou = _iou(boxes, other_boxes)
    iou[labels[:, None] != other_labels[None, :]] = 0.0
    taken, pairs = set(), []
    for i, row in enumerate(iou):
        for j in np.argsort(-row):
            if row[j] < iou_threshold:
                break
            if j not in taken:
                taken.add(j)
                pairs.append((i, int(j)))
                break
    return pairs


def match_boxes(reference, found, iou_threshold=0.5):
    """How many `reference` boxes a box of `found` matches (`matched_pairs`)."""
    return len(matched_pairs(reference, found, iou_threshold))


def box_agreement(got, expected, image_shape, settings, iou_threshold=0.5):
    """(fraction, count): the fraction of the `count` boxes Keras' raw outputs
    `expected` decode to that the file's raw outputs `got` decode to as well
    (IoU >= `iou_threshold`, same class; `match_boxes`).

    Both decode with `keras_sepvit.tasks.retinanet.decode_detections` and the
    detector's `settings` (`detection_settings`), the file's at half the
    confidence threshold, so that a box Keras scores just above it is not lost
    to a rounding just below. (One call decodes both at the lower threshold;
    Keras' boxes are then those above the threshold: greedy NMS keeps the
    same boxes above it whatever scores less.) `count` is 0 (and the
    fraction None) when Keras finds no box.
    """
    from keras_sepvit.tasks.retinanet import decode_detections

    threshold = settings["confidence_threshold"]
    loose = dict(settings, confidence_threshold=threshold / 2, bounding_box_format="xyxy")
    both = [np.concatenate([a, b]) for a, b in zip(_raw(expected), _raw(got))]
    decoded = decode_detections(*both, image_shape, **loose)
    images = len(_raw(expected)[0])
    matched = count = 0
    for i in range(images):
        n = int(decoded["num_detections"][i])
        keep = decoded["confidence"][i, :n] >= threshold  # sorted: the first ones
        reference = (decoded["boxes"][i, :n][keep], decoded["labels"][i, :n][keep])
        m = int(decoded["num_detections"][images + i])
        found = (decoded["boxes"][images + i, :m], decoded["labels"][images + i, :m])
        matched += match_boxes(reference, found, iou_threshold)
        count += int(keep.sum())
    return (matched / count if count else None), count


def _raw(outputs):
    return outputs["bbox_regression"], outputs["cls_logits"]


def agreement_check(name, model, got, expected, min_agreement):
    """Raises RuntimeError when a quantized file agrees with Keras less than
    `min_agreement` on the calibration images (`got` / `expected`: the
    file's and Keras' outputs on them): box agreement for a detector (the
    raw outputs' relative error when Keras finds no box), per-pixel argmax
    agreement for a segmenter, top-1 agreement for a classifier."""
    if is_detector(model):
        from keras_sepvit.tasks.retinanet import detection_settings

        settings = detection_settings(model)
        shape = tuple(model.input_shape[1:3])
        agreement, count = box_agreement(got, expected, shape, settings)
        if count:
            if agreement < min_agreement:
                raise RuntimeError(
                    f"{name} finds only {agreement:.1%} of the {count} boxes the Keras model "
                    f"finds on {len(got['cls_logits'])} calibration images (same class, IoU >= "
                    f"0.5; < min_agreement={min_agreement}): the quantized file is broken. "
                    "Check the calibration images (real training images, as the model takes them)."
                )
            return
    checks.agreement_check(name, got, expected, min_agreement, segmenter=is_segmenter(model))
