"""COCO evaluation through pycocotools: known answers and refusals."""

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from keras_sepvit.tasks import coco_eval  # noqa: E402

GT_BOXES = [np.array([[10, 10, 30, 40], [50, 50, 70, 60]], "float32"), np.array([[0, 0, 20, 20]])]
GT_LABELS = [np.array([3, 1]), np.array([1])]
SIZES = [(64, 80), (32, 32)]


def evaluate(boxes, scores, labels, **kwargs):
    return coco_eval.evaluate_detections(
        GT_BOXES, GT_LABELS, boxes, scores, labels, SIZES, **kwargs
    )


def test_perfect_detections_score_one():
    metrics = evaluate(GT_BOXES, [[0.9, 0.8], [0.7]], GT_LABELS)
    assert set(metrics) == set(coco_eval.STAT_NAMES)
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map50"] == pytest.approx(1.0)


def test_wrong_class_scores_zero():
    metrics = evaluate(GT_BOXES, [[0.9, 0.8], [0.7]], [[4, 2], [0]])
    assert metrics["map"] == 0.0 and metrics["map50"] == 0.0


def test_loose_box_counts_at_iou_half_only():
    # IoU of [10,10,30,40] and [10,10,30,30] is 400/600 = 0.67: a hit at 0.5, not at 0.75.
    boxes = [np.array([[10, 10, 30, 30], [50, 50, 70, 60]]), np.array([[0, 0, 20, 20]])]
    metrics = evaluate(boxes, [[0.9, 0.8], [0.7]], GT_LABELS)
    assert metrics["map50"] == pytest.approx(1.0)
    assert metrics["map75"] == pytest.approx(0.5)  # class 1 still perfect, class 3 missed
    assert 0.5 < metrics["map"] < 1.0


def test_padding_rows_and_formats():
    # keras-hub pads predictions with label -1; yxyx boxes give the same answer.
    boxes = [
        np.array([[10, 10, 40, 30], [50, 50, 60, 70], [0, 0, 1, 1]]),
        np.array([[0, 0, 20, 20]]),
    ]
    labels = [np.array([3, 1, -1]), np.array([1])]
    scores = [np.array([0.9, 0.8, 0.99]), np.array([0.7])]
    yx_gt = [b[:, [1, 0, 3, 2]] for b in GT_BOXES]
    metrics = coco_eval.evaluate_detections(
        yx_gt, GT_LABELS, boxes, scores, labels, SIZES, box_format="yxyx"
    )
    assert metrics["map"] == pytest.approx(1.0)


def test_false_positive_with_higher_score_lowers_ap():
    boxes = [
        np.array([[10, 10, 30, 40], [50, 50, 70, 60], [0, 0, 8, 8]]),
        np.array([[0, 0, 20, 20]]),
    ]
    metrics = evaluate(boxes, [[0.5, 0.8, 0.9], [0.7]], [[3, 1, 3], [1]])
    assert metrics["map50"] < 1.0


def test_no_detections_is_zero():
    metrics = evaluate([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [np.zeros(0, int)] * 2)
    assert metrics == dict.fromkeys(coco_eval.STAT_NAMES, 0.0)


def test_to_coco_xywh():
    np.testing.assert_allclose(coco_eval.to_coco_xywh([[1, 2, 4, 8]]), [[1, 2, 3, 6]])
    np.testing.assert_allclose(coco_eval.to_coco_xywh([[2, 1, 8, 4]], "yxyx"), [[1, 2, 3, 6]])


def test_refusals_name_the_value():
    with pytest.raises(ValueError, match="box_format='cxcywh'"):
        coco_eval.to_coco_xywh([[0, 0, 1, 1]], "cxcywh")
    with pytest.raises(ValueError, match="2 boxes, 1 labels, 2 image_sizes"):
        coco_eval.coco_ground_truth(GT_BOXES, GT_LABELS[:1], SIZES)
    with pytest.raises(ValueError, match="Image 0 has 2 boxes and 1 labels"):
        coco_eval.coco_ground_truth(GT_BOXES, [np.array([3]), np.array([1])], SIZES)
    gt = coco_eval.coco_ground_truth(GT_BOXES, GT_LABELS, SIZES)
    with pytest.raises(ValueError, match=r"image ids \[7\]"):
        coco_eval.coco_evaluate(gt, coco_eval.coco_results([[[0, 0, 1, 1]]], [[1.0]], [[1]], [7]))
