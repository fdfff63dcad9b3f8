"""Mask R-CNN as one TFLite / ONNX file: the whole predict graph, checked by its detections.

The files hold the backbone, FPN, RPN, proposal NMS, RoIAlign, both heads,
class-wise NMS and mask pasting (`keras_sepvit.export.mask_rcnn`); LiteRT and
ONNX Runtime give the eager model's boxes, classes, scores and masks.
"""

import os

import numpy as np
import pytest

pytest.importorskip("keras_hub")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from test_mask_rcnn import tiny_mask_rcnn  # noqa: E402

from keras_sepvit import export  # noqa: E402
from keras_sepvit.export import mask_rcnn as mask_rcnn_export  # noqa: E402
from keras_sepvit.tasks.mask_rcnn import detect_instances  # noqa: E402


def decisive_mask_rcnn():
    """The tiny Mask R-CNN with its objectness, class and mask logits scaled 30x.

    Untrained logits are near 0: scores tie and pasted mask probabilities sit
    at the 0.5 threshold, so rounding alone would reorder detections. Scaled,
    they spread out as a trained model's do.
    """
    model = tiny_mask_rcnn(max_detections=8, test_post_nms_topk=50, max_candidates=100)
    for layer in (model.rpn_head.objectness, model.box_head.classifier, model.mask_head.logits):
        layer.kernel.assign(layer.kernel * 30.0)
    return model


@pytest.fixture(scope="module")
def model():
    return decisive_mask_rcnn()


def _images(count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, 64, 64, 3)).astype("float32")


def _detections(count, boxes, classes, masks):
    return {
        "boxes": np.asarray(boxes, "float32")[None],
        "classes": np.asarray(classes, "int32")[None],
        "scores": np.linspace(0.9, 0.5, len(classes), dtype="float32")[None],
        "num_detections": np.array([count], "int32"),
        "masks": np.asarray(masks, "uint8")[None],
    }


# -- fast -----------------------------------------------------------------------


def test_tflite_runner_returns_integer_outputs_unchanged(tmp_path):
    # LiteRT reports (scale 0, zero point 0) for a tensor that is not
    # quantized: int32 outputs (a Mask R-CNN's classes, num_detections) come
    # back as they are, not multiplied by 0.
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    def outputs(x):
        return {"best": tf.argmax(x, axis=-1, output_type=tf.int32), "value": x * 2.0}

    module = tf.Module()
    module.outputs = outputs
    concrete = [outputs.get_concrete_function()]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(concrete, module)
    path = tmp_path / "ints.tflite"
    path.write_bytes(converter.convert())
    got = export.TFLiteRunner(path)(np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 2.0]]))
    np.testing.assert_array_equal(got["best"], [1, 0])
    assert got["best"].dtype == np.int32
    np.testing.assert_allclose(got["value"][1], [10.0, 0.0, 2.0, 4.0])


def test_instance_agreement_matches_class_box_and_mask():
    masks = np.zeros((3, 64, 64), "uint8")
    masks[0, 8:30, 8:40] = masks[1, 40:60, 2:20] = 1
    boxes = [[8, 8, 40, 30], [2, 40, 20, 60], [0, 0, 0, 0]]
    reference = _detections(2, boxes, [1, 2, -1], masks)
    same = mask_rcnn_export.instance_agreement(reference, reference)
    assert same == {"agreement": 1.0, "mask_iou": 1.0, "box_error": 0.0, "count": 2}
    # a box moved by a pixel still matches (IoU >= 0.9), one of another class does not
    moved = _detections(
        2, np.add(boxes, [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), [1, 0, -1], masks
    )
    found = mask_rcnn_export.instance_agreement(moved, reference)
    assert found["agreement"] == 0.5 and found["box_error"] == 1.0
    # an extra detection in the file counts against it too
    extra = _detections(3, [boxes[0], boxes[1], [30, 30, 50, 50]], [1, 2, 0], masks)
    assert mask_rcnn_export.instance_agreement(extra, reference)["agreement"] == 2 / 3
    # same boxes, a mask half empty
    halved = masks.copy()
    halved[0, 19:30] = 0
    iou = mask_rcnn_export.instance_agreement(_detections(2, boxes, [1, 2, -1], halved), reference)
    assert iou["agreement"] == 1.0 and iou["mask_iou"] == pytest.approx((0.5 + 1.0) / 2)


def test_check_file_refuses_wrong_detections(monkeypatch):
    masks = np.zeros((3, 64, 64), "uint8")
    masks[0, 8:30, 8:40] = masks[1, 40:60, 2:20] = 1
    expected = _detections(2, [[8, 8, 40, 30], [2, 40, 20, 60], [0, 0, 0, 0]], [1, 2, -1], masks)
    monkeypatch.setattr(mask_rcnn_export, "keras_outputs", lambda model, x: expected)
    x = _images(1)
    mask_rcnn_export.check_file("ok", lambda images: expected, None, x)
    with pytest.raises(RuntimeError, match="has outputs one array"):
        mask_rcnn_export.check_file("bad", lambda images: expected["boxes"], None, x)
    wrong = dict(expected, classes=np.array([[0, 0, -1]], "int32"))
    with pytest.raises(RuntimeError, match=r"finds 0\.0% of the detections"):
        mask_rcnn_export.check_file("bad", lambda images: wrong, None, x)
    empty = dict(expected, masks=np.zeros_like(expected["masks"]))
    with pytest.raises(RuntimeError, match="mean mask IoU of 0.000"):
        mask_rcnn_export.check_file("bad", lambda images: empty, None, x)
    cut = dict(expected, masks=expected["masks"][:, :, :32])
    with pytest.raises(RuntimeError, match="mis-shaped masks"):
        mask_rcnn_export.check_file("bad", lambda images: cut, None, x)


def test_refusals_name_the_value_before_any_work(model, tmp_path):
    with pytest.raises(ValueError, match="Received: quantization='int8'"):
        export.to_tflite(model, tmp_path / "m.tflite", quantization="int8")
    with pytest.raises(ValueError, match="Received: batch_size=2"):
        export.to_tflite(model, tmp_path / "m.tflite", batch_size=2)
    with pytest.raises(ValueError, match="Received: batch_size=1"):
        export.to_onnx(model, tmp_path / "m.onnx", batch_size=1)
    with pytest.raises(ValueError, match="Received: target='mobile'"):
        export.to_onnx(model, tmp_path / "m.onnx", target="mobile")
    assert os.listdir(tmp_path) == []


# -- slow: the files ------------------------------------------------------------


@pytest.mark.slow
def test_complete_files_run_in_litert_and_onnx_runtime_like_keras(model, tmp_path):
    tflite = export.to_tflite(model, tmp_path / "mask_rcnn.tflite")
    ops = export.tflite_ops(tflite)
    assert not [op for op in ops if op.startswith("Flex")], ops
    assert {
        "WHILE",
        "TOPK_V2",
        "GATHER",
        "TRANSPOSE_CONV",
    } <= ops  # NMS, top-k, RoIAlign, mask head
    onnx_path = export.to_onnx(model, tmp_path / "mask_rcnn.onnx")
    x = _images(3, seed=1)
    expected = detect_instances(model, x)
    assert expected["num_detections"].min() > 0
    for runner in (export.TFLiteRunner(tflite), export.ONNXRunner(onnx_path)):
        got = runner(x)
        assert sorted(got) == mask_rcnn_export.OUTPUTS
        np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
        np.testing.assert_array_equal(got["classes"], expected["classes"])
        np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-3)
        np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-4)
        assert got["masks"].dtype == np.uint8
        found = mask_rcnn_export.instance_agreement(got, expected)
        assert found["agreement"] == 1.0 and found["mask_iou"] >= 0.99, found
    assert sorted(os.listdir(tmp_path)) == ["mask_rcnn.onnx", "mask_rcnn.tflite"]
