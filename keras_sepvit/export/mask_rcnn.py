"""Mask R-CNN files: the complete predict graph in one TFLite or ONNX file.

`to_tflite(model, path)` and `to_onnx(model, path)` take a Mask R-CNN
(`keras_sepvit.tasks.mask_rcnn.sepvit_mask_rcnn`) as they take a classifier:
the file holds everything `predict` computes (backbone, FPN, RPN, proposal
decoding and NMS, RoIAlign, box and mask heads, class-wise NMS, mask
pasting) and gives the same dict, as named outputs: `boxes` (B, K, 4) xyxy
input pixels, `classes` (B, K) int32 (-1 where empty), `scores` (B, K),
`num_detections` (B,) int32 and `masks` (B, K, H, W) uint8, K =
`max_detections`. TFLite files use builtin ops only (NMS is a `WHILE`
loop, the top-k selections `TOPK_V2`, RoIAlign `GATHER`s); nothing runs
outside the file.

What is particular to these files:

- `export_model`: the functional copy that is converted, traced with a
  dynamic batch. Its NMS is `mask_rcnn_targets.greedy_nms` (a
  `keras.ops.while_loop`), as everywhere in the model, so the file gives
  the eager model's detections in LiteRT and ONNX Runtime alike. A TFLite
  file runs one image per call (`TFLiteRunner` feeds them in turn).
- `keras_outputs`: the reference, the model run eagerly
  (`detect_instances`), not `predict`'s graph.
- `check_file` / `instance_agreement`: the file's detections against
  Keras': each Keras detection must be found with the same class and a box
  IoU >= 0.9 (`MIN_BOX_IOU`), for at least `MIN_AGREEMENT` of them counted
  over both sides, and the found pairs' masks must overlap with a mean IoU
  >= `MIN_MASK_IOU`. Scores near a tie (an untrained model) may swap two
  detections at the `max_detections` cut, hence a share and not all.
- float32 only: `check_arguments` refuses quantized modes.
"""

import keras
import numpy as np

from keras_sepvit.export import dense_quantization

OUTPUTS = ["boxes", "classes", "masks", "num_detections", "scores"]
MIN_BOX_IOU = 0.9
MIN_AGREEMENT = 0.9
MIN_MASK_IOU = 0.9


def is_mask_rcnn(model):
    """A `keras_sepvit.tasks.mask_rcnn.MaskRCNN` (found by class name: no
    keras-hub import for other models)."""
    return any(cls.__name__ == "MaskRCNN" for cls in type(model).__mro__) and hasattr(
        model, "mask_head"
    )


def check_arguments(quantization, batch_size, batch_sizes, target="cpu"):
    """Raises ValueError for what a Mask R-CNN file does not take: a quantized
    mode, a `batch_size` outside `batch_sizes` (its graph has a dynamic
    batch), or ONNX's `target="mobile"` (static batch 1 for NNAPI / CoreML)."""
    if target != "cpu":
        raise ValueError(
            "A Mask R-CNN ONNX file is for ONNX Runtime's CPU kernels: the NNAPI / CoreML "
            "graph needs a static batch and has no while loop for its NMS. "
            f"Received: target={target!r}; use target='cpu'"
        )
    if quantization not in (None, "float32"):
        raise ValueError(
            "A Mask R-CNN file is float32: its proposals, NMS and mask pasting compare "
            "scores and coordinates that int8 would round, and no quantized file of it is "
            f"checked. Received: quantization={quantization!r}; use quantization=None"
        )
    if batch_size not in batch_sizes:
        raise ValueError(
            "A Mask R-CNN file has a dynamic batch (its NMS is a while loop traced for any "
            f"batch; see keras_sepvit.export.mask_rcnn). Received: batch_size={batch_size!r}; "
            f"use one of {batch_sizes}"
        )


def input_shape(model):
    """(H, W, C) of the model's images, which must be static."""
    shape = tuple(model.backbone.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            "Export needs a static input size (the anchors and pasted masks are sized from "
            f"it). Received: a backbone with input_shape={model.backbone.input_shape}; "
            "rebuild it with image_shape=(H, W, 3) and copy the weights."
        )
    return shape


def export_model(model):
    """The functional copy that is converted: images (None, H, W, C) -> the
    detections dict as named outputs (see the module docstring)."""
    inputs = keras.Input(batch_shape=(None,) + input_shape(model), name="image")
    found = model(inputs, training=False)
    outputs = {k: keras.layers.Identity(name=k)(found[k]) for k in OUTPUTS}
    return keras.Model(inputs, outputs, name=f"{model.name}_export")


def sample_inputs(model, inputs):
    """`inputs` as float32, or two random [0, 255] images at the model's size."""
    if inputs is not None:
        return np.asarray(inputs, "float32")
    return np.random.default_rng(0).uniform(0, 255, (2,) + input_shape(model)).astype("float32")


def keras_outputs(model, x):
    """The model's detections on `x`, run eagerly (`detect_instances`)."""
    from keras_sepvit.tasks.mask_rcnn import detect_instances  # keras-hub: Mask R-CNN only

    return detect_instances(model, x)


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def instance_agreement(got, expected, min_box_iou=MIN_BOX_IOU):
    """How far a file's detections `got` agree with Keras' `expected`.

    Returns:
        dict: "agreement", the detections matched one to one (same class,
        box IoU >= `min_box_iou`; `dense_quantization.matched_pairs`) over
        the larger of the two counts, summed over images (1.0 when neither
        finds any); "mask_iou", the mean IoU of the matched pairs' masks (1.0
        with no pair); "box_error", their largest coordinate difference in
        pixels; "count", Keras' detections.
    """
    matched = total = count = 0
    ious, error = [], 0.0
    for i, n in enumerate(np.asarray(expected["num_detections"]).astype(int)):
        m = int(got["num_detections"][i])
        reference = (expected["boxes"][i, :n], expected["classes"][i, :n])
        found = (got["boxes"][i, :m], got["classes"][i, :m])
        pairs = dense_quantization.matched_pairs(reference, found, min_box_iou)
        for a, b in pairs:
            ious.append(_mask_iou(expected["masks"][i, a], got["masks"][i, b]))
            error = max(error, float(np.abs(expected["boxes"][i, a] - got["boxes"][i, b]).max()))
        matched, total, count = matched + len(pairs), total + max(n, m), count + n
    return {
        "agreement": matched / total if total else 1.0,
        "mask_iou": float(np.mean(ious)) if ious else 1.0,
        "box_error": error,
        "count": count,
    }


def check_file(name, runner, model, inputs):
    """Runs the file (`runner`) on `inputs` (None: two random images) and
    raises RuntimeError unless it gives Keras' outputs and detections."""
    x = sample_inputs(model, inputs)
    got, expected = runner(x), keras_outputs(model, x)
    if not isinstance(got, dict) or sorted(got) != OUTPUTS:
        keys = sorted(got) if isinstance(got, dict) else "one array"
        raise RuntimeError(f"{name} has outputs {keys}, a Mask R-CNN {OUTPUTS}")
    for key in OUTPUTS:
        value = np.asarray(got[key])
        if value.shape != expected[key].shape or not np.isfinite(value).all():
            raise RuntimeError(
                f"{name} gives non-finite or mis-shaped {key} {value.shape} (Keras: "
                f"{expected[key].shape})"
            )
    found = instance_agreement(got, expected)
    if found["agreement"] < MIN_AGREEMENT or found["mask_iou"] < MIN_MASK_IOU:
        raise RuntimeError(
            f"{name} finds {found['agreement']:.1%} of the detections of the Keras model on "
            f"{len(x)} images (same class, box IoU >= {MIN_BOX_IOU}; at least "
            f"{MIN_AGREEMENT:.0%} needed), with a mean mask IoU of {found['mask_iou']:.3f} "
            f"(at least {MIN_MASK_IOU} needed): the file is wrong."
        )
