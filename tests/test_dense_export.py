"""Export of dense-prediction models: segmenters and a RetinaNet detector to TFLite and ONNX.

Segmenters: Semantic FPN, DeepLabV3+, UperNet. (Mask R-CNN's complete files:
`test_mask_rcnn_export.py`.)

The files are run in their runtimes (LiteRT, ONNX Runtime) and compared with
Keras: per-pixel argmax agreement and relative error for segmenters, relative
error of the raw head outputs for the detector.
"""

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from test_segmentation import TINY  # noqa: E402  (the one tiny SepViT backbone config)

from keras_sepvit import export  # noqa: E402
from keras_sepvit.export import checks  # noqa: E402
from keras_sepvit.hub import SepViTBackbone  # noqa: E402
from keras_sepvit.tasks.deeplab import deeplabv3_segmenter  # noqa: E402
from keras_sepvit.tasks.semantic_fpn import SemanticFPNSegmenter  # noqa: E402
from keras_sepvit.tasks.upernet import UperNetSegmenter  # noqa: E402

SHAPE = (64, 64, 3)


def _images(count=2, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, (count,) + SHAPE).astype("float32")


def semantic_fpn():
    keras.utils.set_random_seed(0)
    backbone = SepViTBackbone(**TINY, image_shape=SHAPE)
    return SemanticFPNSegmenter(backbone, 5, fpn_channels=16, head_channels=16, groups=4)


def deeplab():
    keras.utils.set_random_seed(0)
    return deeplabv3_segmenter(SepViTBackbone(**TINY, image_shape=SHAPE), 5)


def upernet():
    # the PPM pools the 2x2 P5 map to 1, 2, 3, 6 bins: constant matrices at a static size
    keras.utils.set_random_seed(0)
    backbone = SepViTBackbone(**TINY, image_shape=SHAPE)
    return UperNetSegmenter(backbone, 5, channels=16, auxiliary_channels=8)


def retinanet(num_classes=3):
    import keras_hub

    keras.utils.set_random_seed(0)
    encoder = SepViTBackbone(**TINY, image_shape=SHAPE)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=True, image_shape=SHAPE
    )
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="xyxy"
    )


@pytest.fixture(scope="module")
def segmenter():
    return semantic_fpn()


@pytest.fixture(scope="module")
def detector():
    return retinanet()


def _check_segmentation(got, model, x):
    expected = model.predict(x, verbose=0)
    assert got.shape == expected.shape == (len(x), 64, 64, 5)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.99
    assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)


def test_semantic_fpn_to_tflite_builtin_ops_and_agrees(segmenter, tmp_path):
    path = export.to_tflite(segmenter, tmp_path / "seg.tflite")
    ops = export.tflite_ops(path)
    assert not [op for op in ops if op.startswith("Flex")], ops
    assert "RESIZE_BILINEAR" in ops  # the head's upsampling is a builtin kernel
    x = _images(3, seed=1)
    _check_segmentation(export.TFLiteRunner(path)(x), segmenter, x)


def test_semantic_fpn_to_onnx_agrees(segmenter, tmp_path):
    path = export.to_onnx(segmenter, tmp_path / "seg.onnx")
    x = _images(3, seed=1)
    _check_segmentation(export.ONNXRunner(path)(x), segmenter, x)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("make", [deeplab, upernet], ids=["deeplabv3", "upernet"])
def test_segmenter_exports_and_agrees(make, fmt, tmp_path):
    # Inference graphs only: UperNet's auxiliary head is not in the files.
    model = make()
    if fmt == "tflite":
        path = export.to_tflite(model, tmp_path / "d.tflite")
        assert not [op for op in export.tflite_ops(path) if op.startswith("Flex")]
        runner = export.TFLiteRunner(path)
    else:
        runner = export.ONNXRunner(export.to_onnx(model, tmp_path / "d.onnx"))
    x = _images(2, seed=2)
    _check_segmentation(runner(x), model, x)


def _check_detection(got, model, x):
    expected = export.keras_outputs(model, x)
    assert sorted(got) == sorted(expected) == ["bbox_regression", "cls_logits"]
    assert got["cls_logits"].shape[-1] == 3 and got["bbox_regression"].shape[-1] == 4
    for key, value in expected.items():
        assert got[key].shape == value.shape
        assert np.linalg.norm(got[key] - value) <= 1e-4 * np.linalg.norm(value), key


@pytest.mark.slow
def test_retinanet_raw_outputs_to_tflite(detector, tmp_path):
    path = export.to_tflite(detector, tmp_path / "det.tflite")
    assert not [op for op in export.tflite_ops(path) if op.startswith("Flex")]
    x = _images(2, seed=3)
    got = export.TFLiteRunner(path)(x)
    _check_detection(got, detector, x)


@pytest.mark.slow
def test_retinanet_raw_outputs_to_onnx(detector, tmp_path):
    path = export.to_onnx(detector, tmp_path / "det.onnx")
    x = _images(2, seed=3)
    _check_detection(export.ONNXRunner(path)(x), detector, x)


@pytest.mark.slow
def test_exported_detector_outputs_decode_like_keras(tmp_path):
    retinanet_task = pytest.importorskip("keras_sepvit.tasks.retinanet")
    detector = retinanet()
    # RetinaNet's head initialisation: boxes near their anchors, as after
    # training (keras-hub's own gives boxes of 1e5 pixels, all rounding error).
    retinanet_task.retinanet_initialization(detector, seed=0)
    path = export.to_tflite(detector, tmp_path / "det.tflite")
    x = _images(2, seed=4)
    raw = export.TFLiteRunner(path)(x)
    # Every anchor scores near the 0.01 prior: no threshold, and only the 10
    # best (further down, rounding reorders near-equal untrained scores).
    settings = dict(
        retinanet_task.detection_settings(detector), confidence_threshold=0.0, max_detections=10
    )
    decoded = retinanet_task.decode_detections(
        raw["bbox_regression"], raw["cls_logits"], SHAPE, **settings
    )
    reference = retinanet_task.decode_detections(
        *(export.keras_outputs(detector, x)[k] for k in ("bbox_regression", "cls_logits")),
        SHAPE,
        **settings,
    )
    counts = np.asarray(reference["num_detections"])
    np.testing.assert_array_equal(np.asarray(decoded["num_detections"]), counts)
    assert counts.sum() > 0
    for i, count in enumerate(counts):  # slots past num_detections are padding
        np.testing.assert_array_equal(
            np.asarray(decoded["labels"])[i, :count], np.asarray(reference["labels"])[i, :count]
        )
        np.testing.assert_allclose(
            np.asarray(decoded["boxes"])[i, :count],
            np.asarray(reference["boxes"])[i, :count],
            rtol=1e-3,
            atol=1e-2,
        )


def test_keras_outputs_are_the_raw_head_outputs(detector):
    x = _images(1)
    outputs = export.keras_outputs(detector, x)
    direct = detector(x)
    for key in ("bbox_regression", "cls_logits"):
        np.testing.assert_allclose(outputs[key], keras.ops.convert_to_numpy(direct[key]), atol=1e-5)


def test_checks_catch_a_wrong_segmenter_or_detector_file(segmenter, detector):
    # The checks the exporters run: a file whose pixels disagree, or whose
    # outputs are missing or off, must be refused.
    x = _images(2)
    expected = export.keras_outputs(segmenter, x)
    checks.compare("ok", expected + 1e-7, expected, segmenter, None, 1e-4)
    flipped = expected.copy()
    flipped[:, :16] = -flipped[:, :16]  # a quarter of the pixels change class
    with pytest.raises(RuntimeError, match="relative error|pixels"):
        checks.compare("bad", flipped, expected, segmenter, None, 1e-4)
    with pytest.raises(RuntimeError, match="pixels"):
        checks.agreement_check("bad", flipped, expected, 0.9, segmenter=True)
    raw = export.keras_outputs(detector, x)
    with pytest.raises(RuntimeError, match="has outputs"):
        checks.compare("bad", {"cls_logits": raw["cls_logits"]}, raw, detector, None, 1e-4)
    scaled = dict(raw, bbox_regression=raw["bbox_regression"] * 1.01)
    with pytest.raises(RuntimeError, match="bbox_regression"):
        checks.compare("bad", scaled, raw, detector, None, 1e-4)
