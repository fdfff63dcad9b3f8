"""int8 TFLite and ONNX QDQ files of detectors and segmenters (issue 19, part 3).

Semantic FPN, DeepLabV3+, UperNet and RetinaNet on the tiny SepViT backbone: builtin
ops only, every TFLite node in XNNPACK (FPN upsampling's TILE written as
CONCATENATION), the output tail float, agreement with Keras checked by the
exporters (per-pixel for segmenters, decoded boxes for detectors), a file
below `min_agreement` refused without touching a good file at the path, and
the dense demo's `--export` step (`keras_sepvit.demos.edge`).
"""

import hashlib
import os

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from test_dense_export import SHAPE, retinanet, semantic_fpn, upernet  # noqa: E402

from keras_sepvit import export  # noqa: E402
from keras_sepvit.export import dense_quantization, profiling  # noqa: E402


def _calibration(count=8, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, (count,) + SHAPE).astype("float32")


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -- fast: the TILE rewrite and the agreement measures ---------------------------


def test_one_axis_tile_becomes_concatenation_that_xnnpack_runs(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 8), batch_size=1)
    x = keras.layers.Conv2D(8, 1)(inputs)
    up = keras.layers.UpSampling2D(2)(x)  # nearest: ops.repeat -> TILE
    outputs = keras.layers.Conv2D(4, 1)(up + keras.layers.Conv2D(8, 1, padding="same")(up))
    model = keras.Model(inputs, outputs)
    # Checked on inputs in the toy model's range: the default check images are
    # pixels in [0, 255], which it does not normalise (outputs in the hundreds,
    # where float32 rounding alone neared the 1e-4 tolerance on an AVX2 CPU).
    sample = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype("float32")
    path = export.to_tflite(model, tmp_path / "up.tflite", sample_inputs=sample)
    ops = export.tflite_ops(path)
    assert "TILE" not in ops and "CONCATENATION" in ops, ops
    taken, total, partitions = profiling.xnnpack_delegation(path)
    assert taken == total and partitions == 1
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    np.testing.assert_allclose(export.TFLiteRunner(path)(x), model.predict(x, verbose=0), atol=1e-5)
    blob = open(path, "rb").read()
    assert dense_quantization.replace_tiles(blob) is blob  # no TILE left: unchanged


def test_match_boxes_needs_same_class_and_iou():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], "float32")
    labels = np.array([1, 2])
    assert dense_quantization.match_boxes((boxes, labels), (boxes + 1, labels)) == 2
    assert dense_quantization.match_boxes((boxes, labels), (boxes, labels[::-1])) == 0
    assert dense_quantization.match_boxes((boxes, labels), (boxes + 8, labels)) == 0  # IoU < 0.5
    assert dense_quantization.match_boxes((boxes, labels), (boxes[:1], labels[:1])) == 1
    # one to one: a single found box matches one reference box, not two
    twins = np.concatenate([boxes[:1], boxes[:1]])
    assert dense_quantization.match_boxes((twins, np.array([1, 1])), (boxes[:1], labels[:1])) == 1


@pytest.fixture(scope="module")
def detector():
    from keras_sepvit.tasks import retinanet as retinanet_task

    model = retinanet()
    retinanet_task.retinanet_initialization(model, seed=0)
    model.raw = export.keras_outputs(model, _calibration(1))  # one image's raw outputs
    return model


def _raw_with_boxes(detector, anchors=(5, 300, 700), classes=(0, 1, 2)):
    """Raw outputs (one image) that decode to one confident box per anchor of `anchors`."""
    logits = np.full_like(detector.raw["cls_logits"], -8.0)
    for anchor, label in zip(anchors, classes):
        logits[:, anchor, label] = 4.0
    boxes = np.zeros_like(detector.raw["bbox_regression"])
    return {"bbox_regression": boxes, "cls_logits": logits}


def test_box_agreement_and_the_detector_check(detector):
    from keras_sepvit.tasks.retinanet import detection_settings

    settings, shape = detection_settings(detector), SHAPE[:2]
    expected = _raw_with_boxes(detector)
    # the file scores one box just under the threshold: kept (decoded at half of it)
    near = _raw_with_boxes(detector)
    score = 0.8 * settings["confidence_threshold"]
    near["cls_logits"][:, 5, 0] = np.log(score / (1 - score))
    assert dense_quantization.box_agreement(near, expected, shape, settings) == (1.0, 3)
    wrong_class = _raw_with_boxes(detector, classes=(1, 2, 0))
    assert dense_quantization.box_agreement(wrong_class, expected, shape, settings)[0] == 0.0
    lost = _raw_with_boxes(detector, anchors=(5, 300), classes=(0, 1))
    with pytest.raises(RuntimeError, match=r"finds only 66.7% of the 3 boxes"):
        dense_quantization.agreement_check("bad.tflite", detector, lost, expected, 0.8)
    # no Keras box (an untrained detector): the raw outputs' relative error decides
    raw = detector.raw
    scaled = dict(raw, bbox_regression=raw["bbox_regression"] * 3.0)
    with pytest.raises(RuntimeError, match="relative error"):
        dense_quantization.agreement_check("bad", detector, scaled, raw, 0.8)


def test_onnx_int8_takes_min_agreement_like_tflite():
    import inspect

    onnx_default = inspect.signature(export.to_onnx).parameters["min_agreement"].default
    tflite_default = inspect.signature(export.to_tflite).parameters["min_agreement"].default
    assert onnx_default == tflite_default == 0.8


# -- slow: the files --------------------------------------------------------------


def _check_int8_tflite(path):
    ops = export.tflite_ops(path)
    assert not [op for op in ops if op.startswith("Flex")], ops
    assert "TILE" not in ops and "QUANTIZE" in ops, ops
    taken, total, partitions = profiling.xnnpack_delegation(path)
    assert (taken, partitions) == (total, 1), (taken, total, partitions)


def _check_qdq_onnx(path):
    """Convolutions int8 (fed by DequantizeLinear), the output tail float."""
    import onnx

    graph = onnx.load(os.fspath(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producer.get(n.input[0]) == "DequantizeLinear"]
    assert quantized, "no int8 convolution"
    tail = set(dense_quantization.onnx_output_tail(path))
    assert tail
    for node in graph.node:
        if node.name in tail:
            assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), node.name
            assert all(producer.get(i) != "DequantizeLinear" for i in node.input), node.name


def _int8_segmenter_files(model, calibration, folder, name):
    """The segmenter's int8 TFLite and QDQ ONNX files, checked as the exporters promise."""
    tflite = export.to_tflite(
        model, folder / f"{name}.tflite", quantization="int8", representative_data=calibration
    )
    _check_int8_tflite(tflite)
    onnx_path = export.to_onnx(
        model,
        folder / f"{name}.onnx",
        quantization="int8",
        representative_data=calibration,
        batch_size=1,
    )
    _check_qdq_onnx(onnx_path)
    expected = model.predict(calibration, verbose=0)
    for runner in (export.TFLiteRunner(tflite), export.ONNXRunner(onnx_path)):
        got = runner(calibration)
        agreement = (got.argmax(-1) == expected.argmax(-1)).mean()
        assert agreement >= 0.9, (type(runner).__name__, agreement)  # per pixel
    return tflite, onnx_path


@pytest.mark.slow
def test_semantic_fpn_int8_files_and_a_refused_file_keeps_the_good_one(tmp_path):
    model, calibration = semantic_fpn(), _calibration()
    tflite, onnx_path = _int8_segmenter_files(model, calibration, tmp_path, "fpn")
    # A file below the floor is refused; the good file at the path stays, nothing is left over.
    kept = {tflite: _digest(tflite), onnx_path: _digest(onnx_path)}
    with pytest.raises(RuntimeError, match="min_agreement=1.01"):
        export.to_tflite(
            model, tflite, quantization="int8", representative_data=calibration, min_agreement=1.01
        )
    with pytest.raises(RuntimeError, match="min_agreement=1.01"):
        export.to_onnx(
            model,
            onnx_path,
            quantization="int8",
            representative_data=calibration,
            batch_size=1,
            min_agreement=1.01,
        )
    assert {p: _digest(p) for p in kept} == kept
    assert sorted(os.listdir(tmp_path)) == ["fpn.onnx", "fpn.tflite"]


@pytest.mark.slow
def test_upernet_int8_files_run_in_xnnpack_and_agree_per_pixel(tmp_path):
    # The PPM's adaptive pooling and resize are constant matrices at the export
    # size (BATCH_MATMUL / FULLY_CONNECTED): every node in XNNPACK, int8 too.
    _int8_segmenter_files(upernet(), _calibration(), tmp_path, "upernet")


@pytest.mark.slow
def test_dense_demo_export_step_quick(tmp_path, load_script, capsys):
    # The demo's --export step at --quick size, on the tiny backbone, with
    # DeepLabV3+ as the segmenter (the step takes any; Semantic FPN's files are
    # checked above), so that it gets the demo's check too: int8 mIoU within
    # 0.01 of Keras.
    import argparse

    from test_segmentation import TINY

    from keras_sepvit.data.digit_scenes import NUM_CLASSES, NUM_MASK_CLASSES, make_digit_scenes
    from keras_sepvit.demos import detection, edge, segmentation
    from keras_sepvit.hub import SepViTBackbone
    from keras_sepvit.tasks.deeplab import deeplabv3_segmenter
    from keras_sepvit.tasks.retinanet import sepvit_retinanet

    keras.utils.set_random_seed(0)
    segmenter = deeplabv3_segmenter(SepViTBackbone(**TINY, image_shape=SHAPE), NUM_MASK_CLASSES)
    # the demo's detector: one conv per head (sepvit_retinanet initialises it)
    detector = sepvit_retinanet(
        SepViTBackbone(**TINY, image_shape=SHAPE), NUM_CLASSES, head_conv_layers=1, seed=0
    )
    seg_data = segmentation.make_data(num_train=16, num_test=8, seed=0)
    scenes = tuple(
        make_digit_scenes(n, **detection.SCENES, split=split, seed=i)
        for i, (n, split) in enumerate(((16, "train"), (8, "test")))
    )
    demo = load_script("examples", "dense_demo")
    args = argparse.Namespace(out=str(tmp_path), quick=True)
    report = demo._export(args, detector, segmenter, scenes, seg_data)
    printed = capsys.readouterr().out
    assert "deeplabv3plus_int8.tflite" in printed and "retinanet_int8.onnx" in printed
    rows = report["rows"]
    assert [r["file"] for r in rows if r["task"] == "RetinaNet"] == [
        "keras",
        "retinanet_float32.tflite",
        "retinanet_int8.tflite",
        "retinanet_float32.onnx",
        "retinanet_int8.onnx",
    ]
    for row in rows:
        assert 0.0 <= row["score"] <= 1.0
        if row["file"] != "keras":
            assert row["ms"] > 0 and row["bytes"] > 0
    assert [r["task"] for r in rows[:5]] == ["DeepLabV3+"] * 5
    keras_miou = rows[0]["score"]
    for row in rows[1:5]:  # the segmenter's files: the demo's bar
        assert abs(row["score"] - keras_miou) <= edge.BAR, row
    assert report["bar_met"] == edge.bar_met(rows)
    assert report["machine"].startswith("CPU: ") and report["machine"] in printed
    files = tmp_path / "files"
    for name in ("deeplabv3plus", "retinanet"):
        _check_int8_tflite(files / f"{name}_int8.tflite")
        _check_qdq_onnx(files / f"{name}_int8.onnx")


def test_demo_export_without_the_export_packages_stops_before_training(load_script, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_tf2onnx(name, *args):
        return None if name == "tf2onnx" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_tf2onnx)
    script = load_script("examples", "dense_demo")
    monkeypatch.setattr(script, "_detection", lambda *a: pytest.fail("trained before the check"))
    expected = r"--export needs tf2onnx: pip install -e '\.\[hub,export\]'"
    with pytest.raises(SystemExit, match=expected):
        script.main(["--quick", "--export", "--out", "unused"])
