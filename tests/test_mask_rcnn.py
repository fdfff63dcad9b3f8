import math
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from conftest import backend_env  # noqa: E402
from keras import ops  # noqa: E402
from test_segmentation import TINY  # noqa: E402

from keras_sepvit.hub import SepViTBackbone  # noqa: E402
from keras_sepvit.tasks import mask_rcnn_targets as T  # noqa: E402
from keras_sepvit.tasks.coco_mask_eval import (  # noqa: E402
    coco_evaluate_instances,
    evaluate_instances,
    instance_ground_truth,
    instance_results,
)
from keras_sepvit.tasks.mask_rcnn import (  # noqa: E402
    BoxHead,
    MaskHead,
    MaskRCNN,
    RPNHead,
    detect_instances,
    sepvit_mask_rcnn,
)
from keras_sepvit.tasks.roi_align import (  # noqa: E402
    map_roi_levels,
    multilevel_roi_align,
    paste_masks,
    roi_align,
)

# Small heads and proposal counts for 64x64 images (the defaults are mmdet's COCO ones).
SMALL = dict(
    fpn_channels=16, box_fc_channels=32, mask_channels=16,
    train_pre_nms_topk=200, train_post_nms_topk=100, test_pre_nms_topk=200,
    test_post_nms_topk=100, roi_batch_size=64, max_candidates=200, max_detections=10, seed=0,
)  # fmt: skip
KEYS = {"boxes", "classes", "scores", "num_detections", "masks"}


def tiny_mask_rcnn(image_shape=(64, 64, 3), num_classes=3, **kwargs):
    keras.utils.set_random_seed(0)
    backbone = SepViTBackbone(**TINY, image_shape=image_shape)
    return sepvit_mask_rcnn(backbone, num_classes, **{**SMALL, **kwargs})


def synthetic_batch():
    """2 images, 1 and 2 rectangles (boxes padded with -1, labels with -1)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 40, (2, 64, 64, 3)).astype("float32")
    boxes = np.full((2, 3, 4), -1.0, "float32")
    labels = np.full((2, 3), -1, "int32")
    masks = np.zeros((2, 3, 64, 64), "uint8")
    for n, k, (x1, y1, x2, y2), label in [
        (0, 0, (8, 8, 40, 30), 1), (1, 0, (20, 10, 60, 50), 0), (1, 1, (2, 40, 20, 62), 2),
    ]:  # fmt: skip
        boxes[n, k] = (x1, y1, x2, y2)
        labels[n, k] = label
        masks[n, k, y1:y2, x1:x2] = 1
        images[n, y1:y2, x1:x2] = 60 + 80 * label  # a class-coloured rectangle
    return images, {"boxes": boxes, "labels": labels, "masks": masks}


def torchvision_roi_align(features, boxes, box_indices, output_size, spatial_scale, ratio):
    """NumPy torchvision `roi_align(aligned=True)` (roi_align_kernel.cpp), loop by loop."""
    rows, columns = output_size
    _, height, width, channels = features.shape
    out = np.zeros((len(boxes), rows, columns, channels))
    for k, (box, n) in enumerate(zip(boxes, box_indices)):
        x1, y1, x2, y2 = (float(v) * spatial_scale - 0.5 for v in box)
        bin_h, bin_w = (y2 - y1) / rows, (x2 - x1) / columns
        for ph in range(rows):
            for pw in range(columns):
                for iy in range(ratio):
                    for ix in range(ratio):
                        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                        if y < -1.0 or y > height or x < -1.0 or x > width:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        y0, x0 = math.floor(y), math.floor(x)
                        if y0 >= height - 1:
                            y0 = y1_ = height - 1
                            y = float(y0)
                        else:
                            y1_ = y0 + 1
                        if x0 >= width - 1:
                            x0 = x1_ = width - 1
                            x = float(x0)
                        else:
                            x1_ = x0 + 1
                        ly, lx = y - y0, x - x0
                        f = features[n]
                        out[k, ph, pw] += (
                            (1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1_]
                            + ly * (1 - lx) * f[y1_, x0] + ly * lx * f[y1_, x1_]
                        )  # fmt: skip
                out[k, ph, pw] /= ratio * ratio
    return out


def test_roi_align_matches_torchvision_reference():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 9, 11, 3)).astype("float32")
    corners = rng.uniform(-6, 24, (12, 2, 2))  # boxes partly outside the map too
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1).astype("float32")
    boxes[0] = [3, 3, 3.5, 3.2]  # a tiny box
    indices = rng.integers(0, 2, 12)
    for ratio in (1, 2):
        expected = torchvision_roi_align(features, boxes, indices, (3, 4), 0.5, ratio)
        got = roi_align(features, boxes, indices, (3, 4), 0.5, sampling_ratio=ratio)
        np.testing.assert_allclose(ops.convert_to_numpy(got), expected, atol=1e-5)


def test_multilevel_roi_align_reads_each_box_from_its_level():
    rng = np.random.default_rng(1)
    pyramid = [rng.normal(size=(2, 64 // s, 64 // s, 2)).astype("float32") for s in (4, 8, 16, 32)]
    boxes = np.array(
        [[[0, 0, 50, 50], [10, 10, 150, 130]], [[5, 5, 300, 250], [0, 0, 600, 600]]], "float32"
    )
    levels = ops.convert_to_numpy(map_roi_levels(boxes, 4))
    np.testing.assert_array_equal(levels, [[0, 1], [2, 3]])
    got = ops.convert_to_numpy(multilevel_roi_align(pyramid, boxes, 7, (4, 8, 16, 32)))
    for b in range(2):
        for r in range(2):
            level = levels[b, r]
            one = roi_align(pyramid[level], boxes[b, r : r + 1], [b], 7, 1 / 2 ** (level + 2))
            np.testing.assert_allclose(got[b, r], ops.convert_to_numpy(one)[0], atol=1e-5)


def test_map_roi_levels_follows_mmdet_scales():
    sides = np.array([10, 111, 113, 223, 225, 447, 449, 2000], "float32")
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
    levels = ops.convert_to_numpy(map_roi_levels(boxes, 4))
    np.testing.assert_array_equal(levels, [0, 0, 1, 1, 2, 2, 3, 3])


def test_pasting_a_full_mask_gives_exactly_the_box():
    masks = np.ones((1, 2, 28, 28), "float32")
    boxes = np.array([[[5, 7, 20, 30], [0, 0, 48, 40]]], "float32")
    pasted = ops.convert_to_numpy(paste_masks(masks, boxes, (40, 48)))
    expected = np.zeros((2, 40, 48), "uint8")
    expected[0, 7:30, 5:20] = 1
    expected[1] = 1
    np.testing.assert_array_equal(pasted[0], expected)
    assert pasted.dtype == np.uint8
    empty = ops.convert_to_numpy(paste_masks(np.zeros_like(masks), boxes, (40, 48)))
    assert not empty.any()


def test_anchors_are_mmdet_anchors():
    anchors = ops.convert_to_numpy(T.level_anchors(2, 3, 4))  # (2 * 3 * 3, 4)
    assert anchors.shape == (18, 4)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)  # ratio 0.5 = h / w, area 32^2
    np.testing.assert_allclose(anchors[0], [-w / 2, -h / 2, w / 2, h / 2], rtol=1e-6)
    np.testing.assert_allclose(anchors[1], [-16, -16, 16, 16])
    np.testing.assert_allclose(anchors[3 + 1], [4 - 16, -16, 4 + 16, 16])  # next place: x + 4
    np.testing.assert_allclose(anchors[9 + 1], [-16, 4 - 16, 16, 4 + 16])  # next row: y + 4


def test_box_coding_round_trip_and_clipping():
    anchors = np.array([[10, 10, 30, 50], [0, 0, 8, 8]], "float32")
    boxes = np.array([[12, 5, 40, 45], [1, 2, 5, 9]], "float32")
    deltas = T.encode_boxes(boxes, anchors, T.BOX_STDS)
    np.testing.assert_allclose(
        ops.convert_to_numpy(T.decode_boxes(deltas, anchors, T.BOX_STDS)), boxes, atol=1e-4
    )
    clipped = ops.convert_to_numpy(T.decode_boxes(deltas, anchors, T.BOX_STDS, (40, 38)))
    np.testing.assert_allclose(clipped[0], [12, 5, 38, 40], atol=1e-4)


def test_assignment_thresholds_and_best_anchor_of_each_gt():
    anchors = np.array(
        [
            [0, 0, 10, 10],  # IoU 0.81 with gt 0: positive
            [0, 0, 10, 6],  # IoU 0.62 with gt 0: ignored (0.3 <= IoU < 0.7)
            [50, 50, 60, 60],  # far from both: negative
            [20, 20, 40, 40],  # IoU 0.41 with gt 1, its best anchor: positive
            [21, 30, 40, 50],  # IoU 0.18 with gt 1: negative
        ],
        "float32",
    )[None]
    gt = np.array([[0, 0, 9, 9], [25, 15, 50, 40], [-1, -1, -1, -1]], "float32")[None]
    valid = np.array([[True, True, False]])
    iou = T.box_iou(anchors, gt, valid)
    np.testing.assert_allclose(
        ops.convert_to_numpy(iou)[0], [[0.81, 0, 0], [0.62, 0, 0], [0, 0, 0], [0, 0.41, 0],
                                       [0, 0.18, 0]], atol=0.01
    )  # fmt: skip
    state, matched = T.assign_boxes(iou, valid, 0.7, 0.3, 0.3)
    np.testing.assert_array_equal(ops.convert_to_numpy(state)[0], [1, -1, 0, 1, 0])
    assert ops.convert_to_numpy(matched)[0, 3] == 1
    state, _ = T.assign_boxes(iou, valid, 0.7, 0.3, None)  # without the low-quality rule
    np.testing.assert_array_equal(ops.convert_to_numpy(state)[0], [1, -1, 0, -1, 0])


def test_sampler_quotas():
    state = np.array([[1] * 10 + [0] * 100 + [-1] * 5, [1] * 2 + [0] * 100 + [-1] * 13])
    noise = np.random.default_rng(0).uniform(size=state.shape).astype("float32")
    positive, negative = (ops.convert_to_numpy(m) for m in T.sample_boxes(state, noise, 16, 0.5))
    np.testing.assert_array_equal(positive.sum(1), [8, 2])
    np.testing.assert_array_equal(negative.sum(1), [8, 14])
    assert not (positive & (state != 1)).any() and not (negative & (state != 0)).any()


def greedy_nms(boxes, scores, iou):
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        best = order.pop(0)
        keep.append(best)
        order = [i for i in order if _iou(boxes[best], boxes[i]) <= iou]
    return keep


def _iou(a, b):
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_nms_matches_greedy_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (2, 60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (2, 60, 2))], -1).astype("float32")
    scores = rng.uniform(0.01, 1, (2, 60)).astype("float32")
    for nms in (T.non_max_suppression, T.greedy_nms):
        index, valid = nms(boxes + 1.0, scores, 50, 0.5)
        index, valid = ops.convert_to_numpy(index), ops.convert_to_numpy(valid)
        for b in range(2):
            expected = greedy_nms(boxes[b], scores[b], 0.5)[:50]
            np.testing.assert_array_equal(index[b][valid[b]], expected)
            assert valid[b, : len(expected)].all()


@pytest.fixture(scope="module")
def model():
    return tiny_mask_rcnn()


def test_predict_returns_boxes_classes_scores_masks(model):
    images, _ = synthetic_batch()
    found = model.predict(images, verbose=0)
    assert set(found) == KEYS
    assert found["boxes"].shape == (2, 10, 4) and found["masks"].shape == (2, 10, 64, 64)
    assert found["classes"].shape == found["scores"].shape == (2, 10)
    assert found["num_detections"].shape == (2,)
    same = detect_instances(model, images, batch_size=1)  # eager, per image
    assert {k: v.shape for k, v in same.items()} == {k: v.shape for k, v in found.items()}
    np.testing.assert_allclose(same["scores"][:, 0], found["scores"][:, 0], atol=1e-4)
    count = found["num_detections"]
    for n in range(2):  # padding rows are empty
        assert (found["classes"][n, count[n] :] == -1).all()
        assert not found["masks"][n, count[n] :].any()


@pytest.mark.slow  # about 8 s on 2 cores (tracing); `greedy_nms` itself is in the fast tier
def test_graph_with_unknown_batch_size(model):
    # a TensorFlow graph traced for any batch size (predict's last, smaller batch): the
    # proposals' NMS runs as a while loop then
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow graphs only")
    images, _ = synthetic_batch()
    graph = tf.function(model, input_signature=[tf.TensorSpec((None, 64, 64, 3))])
    found = graph(images[:1])
    assert tuple(found["masks"].shape) == (1, 10, 64, 64)
    eager = model(images[:1])
    np.testing.assert_allclose(found["scores"][:, 0], eager["scores"][:, 0], atol=1e-4)


@pytest.mark.slow  # about 10 s: predict's trace
def test_predict_keeps_the_detections_of_the_eager_model():
    # Scores spread out (heads scaled up), so that ties do not decide: the traced
    # graph (predict) and the eager call keep the same detections. keras-hub's tiled
    # NMS kept 22-34 of these 40 in a graph.
    model = tiny_mask_rcnn()
    for layer in (model.box_head, model.rpn_head):
        for weight in layer.weights:
            weight.assign(weight * 8.0)
    images = np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    graph = model.predict(images, batch_size=4, verbose=0)
    eager = detect_instances(model, images, batch_size=4)
    np.testing.assert_array_equal(graph["num_detections"], eager["num_detections"])
    assert graph["num_detections"].sum() == 40
    np.testing.assert_array_equal(graph["classes"], eager["classes"])
    np.testing.assert_allclose(graph["boxes"], eager["boxes"], atol=1e-3)
    assert (graph["masks"] != eager["masks"]).mean() < 1e-3


def test_predict_at_64x96():
    model = tiny_mask_rcnn(image_shape=(64, 96, 3), max_detections=5, test_post_nms_topk=50)
    found = detect_instances(model, np.zeros((1, 64, 96, 3), "float32"))
    assert set(found) == KEYS
    assert found["masks"].shape == (1, 5, 64, 96) and found["boxes"].shape == (1, 5, 4)
    assert (found["boxes"][..., 2] <= 96).all() and (found["boxes"][..., 3] <= 64).all()


def test_loss_components_are_finite(model):
    images, targets = synthetic_batch()
    losses = model.loss_components(model(images, training=True), targets)
    assert set(losses) == {"rpn_cls", "rpn_box", "box_cls", "box_l1", "mask"}
    for name, value in losses.items():
        assert np.isfinite(float(value)) and float(value) >= 0, (name, value)
    # untrained: sigmoid CE of logits near 0 is log 2; softmax CE over 4 classes about log 4
    assert abs(float(losses["rpn_cls"]) - math.log(2)) < 0.05
    assert abs(float(losses["box_cls"]) - math.log(4)) < 0.3
    # `evaluate` hands detections to compute_loss: the raw outputs are computed again
    total = model.compute_loss(images, targets, model(images), training=False)
    assert np.isfinite(float(total)) and float(total) > 0


def test_save_and_load_round_trip(model, tmp_path):
    images, _ = synthetic_batch()
    path = str(tmp_path / "mask_rcnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MaskRCNN)
    assert loaded.get_config() == model.get_config()
    a, b = detect_instances(model, images), detect_instances(loaded, images)
    for key in KEYS:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


@pytest.mark.parametrize(
    "make, input_shapes, shapes",
    [
        (lambda: RPNHead(8, 3), [(2, 4, 6, 5), (2, 2, 3, 5)], [(2, 90), (2, 90, 4)]),
        (lambda: BoxHead(3, 16), (2, 5, 7, 7, 4), [(2, 5, 4), (2, 5, 3, 4)]),
        (lambda: MaskHead(3, 8, 2), (2, 5, 14, 14, 4), [(2, 5, 28, 28, 3)]),
    ],
)
def test_head_layers_round_trip(make, input_shapes, shapes):
    rng = np.random.default_rng(0)
    if isinstance(input_shapes, list):  # RPNHead: one map per level
        inputs = [rng.normal(size=s).astype("float32") for s in input_shapes]
    else:
        inputs = rng.normal(size=input_shapes).astype("float32")
    layer = make()
    expected = layer(inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert [tuple(t.shape) for t in expected] == shapes
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert restored.get_config() == layer.get_config()
    restored(inputs)  # build
    restored.set_weights(layer.get_weights())
    got = restored(inputs)
    for a, b in zip(got if isinstance(got, tuple) else (got,), expected):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6)


def test_refusals_name_the_value():
    backbone = SepViTBackbone(**TINY, image_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="nms_iou=1.5"):
        MaskRCNN(backbone, 3, nms_iou=1.5)
    with pytest.raises(ValueError, match="num_classes=0"):
        sepvit_mask_rcnn(backbone, 0)
    with pytest.raises(ValueError, match="sampling_ratio=0"):
        roi_align(np.zeros((1, 4, 4, 1)), np.zeros((1, 4)), [0], 2, sampling_ratio=0)


@pytest.mark.slow  # about 25 s on 2 cores, 18 of them tracing the train step
def test_fit_decreases_the_loss():
    model = tiny_mask_rcnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = synthetic_batch()
    history = model.fit(images, targets, batch_size=2, epochs=15, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3]), history


def test_segm_evaluation_runs_on_the_model_output(model):
    images, targets = synthetic_batch()
    found = detect_instances(model, images)
    coco_gt = instance_ground_truth(targets["masks"], targets["labels"], categories=range(3))
    metrics = coco_evaluate_instances(coco_gt, instance_results(found))
    assert set(metrics) == {"bbox", "segm"}
    assert all(0.0 <= v <= 1.0 for v in metrics["segm"].values())


def test_perfect_masks_score_one_and_wrong_ones_zero():
    _, targets = synthetic_batch()
    labels, masks = targets["labels"], targets["masks"]
    perfect = {
        "boxes": targets["boxes"], "classes": labels,
        "scores": np.where(labels >= 0, 0.9, 0.0), "masks": masks,
    }  # fmt: skip
    metrics = evaluate_instances(masks, labels, perfect)
    assert metrics["segm"]["map"] == pytest.approx(1.0)
    assert metrics["bbox"]["map"] == pytest.approx(1.0)
    shifted = dict(perfect, masks=np.roll(masks, 20, axis=3))
    assert evaluate_instances(masks, labels, shifted)["segm"]["map50"] < 0.5


def test_results_at_the_original_size():
    masks = np.zeros((1, 1, 64, 64), "uint8")
    masks[0, 0, 10:30, 20:40] = 1  # the network saw the image at twice its size
    found = {"boxes": [[[20, 10, 40, 30]]], "classes": [[0]], "scores": [[1.0]], "masks": masks}
    result = instance_results(found, scales=[2.0], image_sizes=[(30, 30)])[0]
    np.testing.assert_allclose(result["bbox"], [10, 5, 10, 10])
    assert result["segmentation"]["size"] == [30, 30]


_OTHER_BACKEND = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_mask_rcnn import synthetic_batch, tiny_mask_rcnn
import keras
model = tiny_mask_rcnn()
images, targets = synthetic_batch()
found = model.predict(images, verbose=0)
assert set(found) == {"boxes", "classes", "scores", "num_detections", "masks"}, found.keys()
assert found["masks"].shape == (2, 10, 64, 64), found["masks"].shape
model.compile(optimizer=keras.optimizers.Adam(1e-3))
history = model.fit(images, targets, batch_size=2, epochs=8, verbose=0).history["loss"]
assert np.isfinite(history).all() and history[-1] < history[0], history
print("ok", history)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax"])
def test_predict_and_fit_on_other_backends(backend):
    pytest.importorskip(backend)
    env = backend_env(backend)
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND, os.path.dirname(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
