"""Edge export: TFLite (float32, float16, dynamic-range, int8, int16x8) and ONNX.

Each function converts, loads the file back in the runtime that will serve it
(LiteRT interpreter, ONNX Runtime), compares it with the Keras model on sample
inputs and returns the path. TensorFlow backend; the TFLite files use builtin
ops only (no Flex), which `tflite_ops` lets you check. The TFLite modes, and
which to pick, are the table in `keras_sepvit.export.tflite`.

Dense-prediction models export the same way (`tests/test_dense_export.py`):
a segmenter (`keras_sepvit.tasks.semantic_fpn.SemanticFPNSegmenter`,
keras-hub's `DeepLabV3ImageSegmenter`) gives per-pixel logits (B, H, W,
classes), checked by per-pixel argmax agreement and relative error; a
detector (keras-hub's `RetinaNetObjectDetector`) gives its raw head outputs
`{"bbox_regression": (B, anchors, 4), "cls_logits": (B, anchors, classes)}`
(named outputs in both files; `TFLiteRunner` and `ONNXRunner` return them as
a dict), checked by relative error (float files) or by the share of Keras'
decoded boxes the file finds (int8 files, `dense_quantization`). Anchor
decoding and NMS are not in the files (keras-hub's decoder is a Python
loop over dynamic shapes): run `keras_sepvit.tasks.retinanet.decode_detections`
on the outputs. A Mask R-CNN (`keras_sepvit.tasks.mask_rcnn`) exports whole
(float32): the file computes everything `predict` does and gives its dict
(`boxes`, `classes`, `scores`, `num_detections`, `masks`), checked against
the eager model's detections (`keras_sepvit.export.mask_rcnn`).

The package, one job per module:

| module | job |
|---|---|
| `tflite` | `to_tflite`: conversion, the quantization modes, the LiteRT check |
| `onnx` | `to_onnx`: tf2onnx, the int8 QDQ file, the ONNX Runtime check |
| `signatures` | what a model takes and gives (`keras_outputs`) |
| `checks` | arguments, calibration images, file-vs-Keras comparisons |
| `runtimes` | `TFLiteRunner`, `ONNXRunner`, `tflite_ops`, `median_latency_ms` |
| `inference` | the export-time copy (static batch, exact folds) |
| `tflite_quantization` | the "int8" (XNNPACK) and "dynamic" TFLite recipes |
| `onnx_graph` | ONNX graph rewrites for ONNX Runtime |
| `onnx_mobile` | the `target="mobile"` graph (NNAPI, CoreML) and `to_ort` |
| `mobile_checks` | the accelerators' checkers: ONNX partitions, TFLite GPU delegate |
| `dense_quantization` | int8 for detectors and segmenters: rules, box/pixel agreement |
| `mask_rcnn` | Mask R-CNN's complete file: the traced copy, refusals, detection agreement |
| `qat` | quantization-aware training |
| `report` | the export report of `export/export_model.py` |
| `profiling` | per-op time and XNNPACK delegation of a .tflite file |
"""

from keras_sepvit.export.checks import FLOAT_PIXEL_AGREEMENT
from keras_sepvit.export.onnx import ONNX_QUANTIZATIONS, ONNX_TARGETS, to_onnx
from keras_sepvit.export.onnx_mobile import to_ort
from keras_sepvit.export.runtimes import ONNXRunner, TFLiteRunner, median_latency_ms, tflite_ops
from keras_sepvit.export.signatures import keras_outputs
from keras_sepvit.export.tflite import QUANTIZATIONS, float_attention_tensors, to_tflite

__all__ = [
    "FLOAT_PIXEL_AGREEMENT",
    "ONNX_QUANTIZATIONS",
    "ONNX_TARGETS",
    "QUANTIZATIONS",
    "ONNXRunner",
    "TFLiteRunner",
    "float_attention_tensors",
    "keras_outputs",
    "median_latency_ms",
    "tflite_ops",
    "to_onnx",
    "to_ort",
    "to_tflite",
]
