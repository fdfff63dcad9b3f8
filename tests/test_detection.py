"""RetinaNet on SepViT (keras_sepvit.tasks.retinanet): structure, decoding, serialization."""

import math

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from test_segmentation import TINY  # noqa: E402  (the one tiny SepViT backbone config)

from keras_sepvit.demos.peers import mit_b0  # noqa: E402
from keras_sepvit.hub import SepViTBackbone  # noqa: E402
from keras_sepvit.tasks import retinanet  # noqa: E402


def tiny_sepvit(image_shape=None):
    keras.utils.set_random_seed(0)
    return SepViTBackbone(**TINY, image_shape=image_shape)


def tiny_mit(side=64):
    return mit_b0(
        (side, side, 3),
        layerwise_depths=[1, 1, 1, 1],
        hidden_dims=[8, 16, 24, 32],
        layerwise_num_heads=[1, 1, 2, 2],
    )


def anchor_count(height, width, per_place=9):
    return sum(
        math.ceil(height / 2**level) * math.ceil(width / 2**level) * per_place
        for level in range(3, 8)
    )


def test_sepvit_retinanet_levels_heads_and_prior():
    detector = retinanet.sepvit_retinanet(tiny_sepvit(), 5, head_conv_layers=1, seed=0)
    fpn = detector.backbone
    assert (fpn.min_level, fpn.max_level, fpn.use_p5) == (3, 7, True)
    assert sorted(fpn.pyramid_outputs) == ["P3", "P4", "P5", "P6", "P7"]
    # The FPN reads the backbone's P3..P5 (strides 8..32), not P2.
    assert sorted(fpn.feature_pyramid.lateral_conv_layers) == ["P3", "P4", "P5"]
    assert len(detector.classification_head.conv_layers) == 1
    outputs = detector(np.zeros((2, 96, 64, 3), "float32"))
    assert outputs["cls_logits"].shape == (2, anchor_count(96, 64), 5)
    assert outputs["bbox_regression"].shape == (2, anchor_count(96, 64), 4)
    bias = keras.ops.convert_to_numpy(detector.classification_head.prediction_layer.bias)
    np.testing.assert_allclose(bias, -math.log(0.99 / 0.01), rtol=1e-6)
    np.testing.assert_array_equal(detector.box_head.prediction_layer.bias, 0.0)
    kernel = keras.ops.convert_to_numpy(detector.classification_head.conv_layers[0].kernel)
    assert 0.008 < kernel.std() < 0.012  # N(0, 0.01), not keras-hub's N(0, 0.05)
    # Untrained: every anchor is background with probability ~0.99.
    scores = keras.ops.convert_to_numpy(keras.ops.sigmoid(outputs["cls_logits"]))
    assert scores.max() < 0.05


def test_stage_named_pyramid_is_rekeyed_by_stride():
    mit = tiny_mit(64)
    assert retinanet.stride_level_names(mit) == {"P1": "P2", "P2": "P3", "P3": "P4", "P4": "P5"}
    detector = retinanet.sepvit_retinanet(mit, 3, head_conv_layers=0)
    encoder = detector.backbone.image_encoder
    assert isinstance(encoder, retinanet.StrideKeyedBackbone)
    p3 = detector.backbone.feature_pyramid.lateral_conv_layers["P3"]
    assert p3.kernel.shape[-2] == 16  # MiT's stride-8 map (its "P2"); its "P3" has 24
    assert detector(np.zeros((1, 64, 64, 3)))["cls_logits"].shape == (1, anchor_count(64, 64), 3)


def test_refusals_name_the_value():
    with pytest.raises(ValueError, match="Received: backbone=<Sequential"):
        retinanet.sepvit_retinanet(keras.Sequential([keras.layers.Dense(2)]), 3)
    with pytest.raises(ValueError, match=r"image_shape=\(100, 64, 3\)"):
        retinanet.sepvit_retinanet(tiny_sepvit(), 3, image_shape=(100, 64, 3))
    with pytest.raises(ValueError, match="num_classes=0"):
        retinanet.sepvit_retinanet(tiny_sepvit(), 0)
    with pytest.raises(ValueError, match="level_names"):
        retinanet.StrideKeyedBackbone(tiny_mit(), {"P9": "P3"})


def same_detections(found, expected, image):
    """Both decoders keep the same boxes; the order may differ only between
    near-equal scores (a 1e-6 rounding difference between CPUs swaps them)."""
    count = int(expected["num_detections"][image])
    assert int(found["num_detections"][image]) == count

    def rows(result):
        return np.concatenate(
            [
                result["labels"][image, :count, None].astype("float64"),
                result["confidence"][image, :count, None],
                result["boxes"][image, :count],
            ],
            axis=1,
        )

    ours, theirs = rows(found), rows(expected)
    assert (np.diff(ours[:, 1]) <= 1e-6).all(), "confidences must come sorted, best first"
    # Pair every detection with the expected one of the same label and box.
    distance = np.abs(ours[:, None, 2:] - theirs[None, :, 2:]).max(-1)
    distance[ours[:, None, 0] != theirs[None, :, 0]] = np.inf
    distance += np.abs(ours[:, None, 1] - theirs[None, :, 1]) * 100
    partner = distance.argmin(1)
    assert sorted(partner) == list(range(count)), "a detection has no expected partner"
    np.testing.assert_allclose(distance[np.arange(count), partner], 0, atol=1e-3)
    # Where neighbouring scores are clearly apart, the order is the same too.
    apart = np.abs(np.diff(theirs[:, 1])) > 1e-4
    clear = np.concatenate([[True], apart]) & np.concatenate([apart, [True]])
    np.testing.assert_array_equal(partner[clear], np.arange(count)[clear])


def greedy_nms_holds(found, image, iou_threshold):
    """No kept box overlaps a better kept box of any class by the threshold or more."""
    count = int(found["num_detections"][image])
    boxes = found["boxes"][image, :count].astype("float64")
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), -1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], -1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    assert (np.triu(iou, 1) < iou_threshold).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_decode_detections_matches_keras_hub_decoding(seed):
    detector = retinanet.sepvit_retinanet(
        tiny_sepvit((64, 64, 3)), 4, head_conv_layers=1, confidence_threshold=0.2, seed=0
    )
    # Scores that vary with the place and the anchor (the untrained prior gives
    # near-equal ones everywhere), 100-200 of them above the threshold.
    layer = detector.classification_head.prediction_layer
    rng = np.random.default_rng(seed)
    layer.bias.assign(rng.normal(-4.5, 1, layer.bias.shape).astype("float32"))
    layer.kernel.assign(rng.normal(0, 0.1, layer.kernel.shape).astype("float32"))
    images = np.random.default_rng(1).uniform(-2, 2, (2, 64, 64, 3)).astype("float32")
    raw = detector(images)
    # keras-hub's own decoding (anchors, deltas, its tiled NMS), run eagerly.
    # Not `detector.predict`: in TensorFlow's graph, Grappler's constant folding
    # makes keras-hub's tiled NMS drop boxes that greedy NMS keeps (55 of 62 here,
    # each with IoU < 0.5 against every kept box; docs/dense.md), which is why
    # our scripts decode eagerly with `retinanet.detect`.
    expected = keras.tree.map_structure(
        keras.ops.convert_to_numpy, detector.decode_predictions(raw, images)
    )
    settings = retinanet.detection_settings(detector)
    assert settings["confidence_threshold"] == 0.2
    found = retinanet.decode_detections(
        raw["bbox_regression"], raw["cls_logits"], (64, 64), **settings
    )
    assert (found["num_detections"] > 10).all()
    for image in range(2):
        same_detections(found, expected, image)
        greedy_nms_holds(found, image, settings["iou_threshold"])
    # `detect` (odd last batch included) gives the same.
    batched = retinanet.detect(detector, np.concatenate([images, images[:1]]), batch_size=2)
    for image in range(2):
        same_detections(batched, expected, image)
    last = {key: value[2:] for key, value in batched.items()}
    same_detections(last, expected, 0)
    with pytest.raises(ValueError, match=r"image_shape=\(96, 64\)"):
        retinanet.decode_detections(raw["bbox_regression"], raw["cls_logits"], (96, 64))


def test_detector_keras_round_trip(tmp_path):
    detector = retinanet.sepvit_retinanet(tiny_mit(64), 3, head_conv_layers=1, seed=0)
    images = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    path = str(tmp_path / "detector.keras")
    detector.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.backbone.image_encoder, retinanet.StrideKeyedBackbone)
    assert loaded.backbone.image_encoder.level_names == {
        "P1": "P2",
        "P2": "P3",
        "P3": "P4",
        "P4": "P5",
    }
    for key in ("cls_logits", "bbox_regression"):
        np.testing.assert_allclose(loaded(images)[key], detector(images)[key], atol=1e-5)
    assert retinanet.detection_settings(loaded) == retinanet.detection_settings(detector)


def test_stride_keyed_backbone_config_round_trip():
    wrapper = retinanet.StrideKeyedBackbone(tiny_mit(64), {"P2": "P3", "P4": "P5"})
    config = wrapper.get_config()
    assert config["level_names"] == {"P2": "P3", "P4": "P5"}
    clone = retinanet.StrideKeyedBackbone.from_config(config)
    assert sorted(clone.pyramid_outputs) == ["P3", "P5"]
    assert clone.count_params() == wrapper.count_params()


def test_warmup_step_decay():
    from keras_sepvit.training.schedules import WarmupStepDecay

    schedule = WarmupStepDecay(1e-4, warmup_steps=10, boundaries=[20, 30])
    rates = [float(schedule(step)) for step in (0, 5, 10, 19, 20, 29, 30, 99)]
    np.testing.assert_allclose(
        rates, [1e-7, 1e-4 * (0.001 + 0.999 * 0.5), 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rtol=1e-5
    )
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="learning_rate=0"):
        WarmupStepDecay(0, 1, [])


def test_draw_detections_skips_padding_and_low_scores():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_sepvit.demos.detection import draw_detections

    fig, ax = plt.subplots()
    boxes = [[2, 2, 10, 12], [20, 20, 30, 40], [0, 0, 5, 5], [1, 1, 3, 3]]
    draw_detections(ax, np.zeros((48, 48, 3), "uint8"), boxes, [3, 7, 1, -1], [0.9, 0.6, 0.2, 0.99])
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.texts] == ["3 0.90", "7 0.60"]
    draw_detections(ax, np.zeros((48, 48, 3), "uint8"), boxes[:1], [5])  # ground truth
    assert ax.texts[-1].get_text() == "5"
    plt.close(fig)


def test_demo_refuses_unknown_backbone():
    from keras_sepvit.demos.backbones import build_backbone

    with pytest.raises(ValueError, match="backbone_name='resnet'"):
        build_backbone("resnet")


@pytest.mark.slow
def test_train_and_evaluate_detector_contract():
    from keras_sepvit.data.digit_scenes import make_digit_scenes
    from keras_sepvit.demos.detection import SCENES, train_and_evaluate_detector

    train = make_digit_scenes(32, **SCENES, split="train", seed=0)
    test = make_digit_scenes(8, **SCENES, split="test", seed=1)
    result = train_and_evaluate_detector("mit_b0", train, test, epochs=2, verbose=0)
    assert 0.0 <= result["map"] <= result["map50"] <= 1.0
    assert result["seconds"] > 0 and result["cpu_seconds"] > 0
    assert len(result["history"]["loss"]) == 2
    assert isinstance(result["model"], keras_hub.models.RetinaNetObjectDetector)
    with pytest.raises(ValueError, match="batch_size=64"):
        train_and_evaluate_detector("mit_b0", train, test, batch_size=64)
