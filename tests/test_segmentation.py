"""Semantic FPN layers and segmenter, DeepLabV3 on SepViT: shapes, round trips, backends."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import backend_env
from keras import ops

pytest.importorskip("keras_hub")

from keras_sepvit.demos.peers import mit_b0  # noqa: E402
from keras_sepvit.hub import SepViTBackbone  # noqa: E402
from keras_sepvit.tasks import semantic_fpn  # noqa: E402
from keras_sepvit.tasks.deeplab import deeplabv3_segmenter  # noqa: E402
from keras_sepvit.tasks.semantic_fpn import (  # noqa: E402
    FPNNeck,
    SemanticFPNHead,
    SemanticFPNSegmenter,
    UpsampleLike,
)

TINY = dict(
    depths=(1, 1, 1, 1),
    channels=(8, 16, 16, 32),
    num_heads=(1, 1, 2, 2),
    window_sizes=((7,), (7,), (7,), (7,)),
)
HEAD = dict(fpn_channels=16, head_channels=16, groups=4)


def tiny_backbone(image_shape=None):
    return SepViTBackbone(**TINY, image_shape=image_shape)


def tiny_segmenter(num_classes=5, image_shape=None, **kwargs):
    keras.utils.set_random_seed(0)
    return SemanticFPNSegmenter(tiny_backbone(image_shape), num_classes, **{**HEAD, **kwargs})


def pyramid_inputs(height=16, width=24, channels=(8, 16, 16, 32), batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"P{i + 2}": rng.normal(size=(batch, -(-height // 2**i), -(-width // 2**i), c)).astype(
            "float32"
        )
        for i, c in enumerate(channels)
    }


@pytest.mark.parametrize("head", ["semantic_fpn", "upernet"])
def test_channels_first_segmenter_equals_channels_last(head):
    """A channels-first segmenter (backbone and heads) gives the channels-last
    numbers, transposed, from the same weights. Its heads run their
    convolutions channels-last inside (keras_sepvit.tasks.layout), so it also
    runs where TensorFlow has no NCHW Conv2D (CPUs it leaves oneDNN off on)."""
    from keras_sepvit.tasks.upernet import UperNetSegmenter

    def build(data_format):
        keras.utils.set_random_seed(0)
        shape = (40, 56, 3) if data_format == "channels_last" else (3, 40, 56)
        backbone = SepViTBackbone(**TINY, image_shape=shape, data_format=data_format)
        if head == "semantic_fpn":
            return SemanticFPNSegmenter(backbone, 4, **HEAD)
        return UperNetSegmenter(backbone, 4, channels=16, auxiliary_channels=8)

    last, first = build("channels_last"), build("channels_first")
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).uniform(-2, 2, (2, 40, 56, 3)).astype("float32")
    expected = ops.convert_to_numpy(last(x))
    got = ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    assert got.shape == (2, 4, 40, 56)
    np.testing.assert_allclose(got, np.transpose(expected, (0, 3, 1, 2)), atol=1e-4)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_dynamic_upsampling_equals_resize(factor, interpolation):
    # The dynamic-size path (used when H, W are unknown while tracing) must
    # compute exactly what ops.image.resize does on static sizes.
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype("float32")
    expected = ops.image.resize(x, (5 * factor, 7 * factor), interpolation=interpolation)
    got = x
    for axis in (1, 2):
        got = semantic_fpn._upsample_axis(ops.convert_to_tensor(got), factor, axis, interpolation)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, atol=1e-5)


def test_dynamic_size_model_equals_static_size_model():
    import tensorflow as tf

    model = tiny_segmenter()
    x = np.random.default_rng(1).uniform(-2, 2, (1, 50, 83, 3)).astype("float32")
    dynamic = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    np.testing.assert_allclose(dynamic(x).numpy(), model(x).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "layer, inputs",
    [
        (FPNNeck(16, name="fpn"), pyramid_inputs()),
        (SemanticFPNHead(5, channels=16, groups=4, name="head"), pyramid_inputs(channels=[16] * 4)),
        (
            SemanticFPNHead(5, channels=16, norm="batch", dropout=0.0, name="head"),
            pyramid_inputs(channels=[16] * 4),
        ),
        (
            UpsampleLike(4, name="up"),
            [np.ones((1, 4, 6, 3), "float32"), np.zeros((1, 15, 22, 1), "float32")],
        ),
    ],
    ids=["fpn", "head_gn", "head_bn", "upsample"],
)
def test_layer_config_round_trip_keeps_outputs(layer, inputs):
    out = layer(inputs)
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config  # plain data only
    clone = type(layer).from_config(config)
    clone(inputs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(clone(inputs))):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6)


def test_head_shapes_and_stage_counts():
    inputs = pyramid_inputs(height=64, width=96, channels=[16] * 4)
    head = SemanticFPNHead(7, channels=16, groups=4)
    assert tuple(head(inputs).shape) == (2, 64, 96, 7)
    # Kirillov et al.: P2 one conv stage, P3 one, P4 two, P5 three.
    assert {k: len(v) for k, v in head.stages.items()} == {"P2": 1, "P3": 1, "P4": 2, "P5": 3}
    fpn = FPNNeck(16)
    outputs = fpn(pyramid_inputs(height=63, width=84))  # ceil sizes: 63, 32, 16, 8 rows
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "P2": (2, 63, 84, 16),
        "P3": (2, 32, 42, 16),
        "P4": (2, 16, 21, 16),
        "P5": (2, 8, 11, 16),
    }


def test_fpn_top_down_reaches_the_finest_level():
    # Changing P5 alone must change P2's output (the top-down pathway works).
    fpn = FPNNeck(8)
    a = pyramid_inputs()
    b = dict(a, P5=a["P5"] + 1.0)
    diff = ops.convert_to_numpy(fpn(a)["P2"] - fpn(b)["P2"])
    assert np.abs(diff).max() > 1e-3


@pytest.mark.parametrize("size", [(64, 96), (50, 83), (32, 32)])
def test_segmenter_any_input_size(size):
    model = tiny_segmenter()
    x = np.random.default_rng(0).uniform(-2, 2, (2, *size, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, *size, 5)


def test_segmenter_keras_round_trip_and_config(tmp_path):
    model = tiny_segmenter(image_shape=(64, 64, 3))
    x = np.random.default_rng(0).uniform(-2, 2, (2, 64, 64, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    config = model.get_config()
    for key, value in dict(num_classes=5, fpn_channels=16, head_channels=16, groups=4).items():
        assert config[key] == value
    path = str(tmp_path / "segmenter.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SemanticFPNSegmenter)
    assert isinstance(loaded.backbone, SepViTBackbone)
    assert loaded.count_params() == model.count_params()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
    rebuilt = SemanticFPNSegmenter.from_config(model.get_config())
    assert rebuilt.count_params() == model.count_params()


def test_segmenter_compile_defaults_and_every_weight_gets_a_gradient():
    import tensorflow as tf

    model = tiny_segmenter(image_shape=(32, 32, 3), dropout=0.0)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    assert model.optimizer.weight_decay == pytest.approx(1e-4)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 5, (2, 32, 32))
    y[0, :4] = 255  # ignored
    with tf.GradientTape() as tape:
        loss = model.loss(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [
        w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g.numpy())
    ]
    # PSA over a single window (every block at 32x32 but stage 1) is a softmax
    # over one token: its query/key weights get no gradient, in the authors'
    # backbone too. Everything else, the whole head included, must.
    single_window_psa = ("attn/window_norm", "attn/pointwise_qk")
    assert [p for p in missing if not any(s in p for s in single_window_psa)] == []
    assert any(w.path.startswith("semantic_fpn_head") for w in model.trainable_weights)
    assert np.isfinite(float(loss))


def test_segmenter_on_mit_backbone_maps_its_pyramid_keys():
    mit = mit_b0(
        (64, 64, 3),
        layerwise_depths=[1, 1, 1, 1],
        layerwise_num_heads=[1, 1, 1, 1],
        max_drop_path_rate=0.0,
        hidden_dims=[8, 8, 8, 8],
    )
    assert semantic_fpn.default_pyramid_keys(mit) == ("P1", "P2", "P3", "P4")
    model = SemanticFPNSegmenter(mit, 3, **HEAD)
    assert model.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape == (1, 64, 64, 3)


def test_arguments_are_validated_naming_the_value():
    with pytest.raises(ValueError, match="norm='layer'"):
        SemanticFPNHead(3, norm="layer")
    with pytest.raises(ValueError, match="groups=5"):
        SemanticFPNHead(3, channels=16, groups=5)
    with pytest.raises(ValueError, match="num_classes=0"):
        SemanticFPNHead(0)
    with pytest.raises(ValueError, match="factor=0"):
        UpsampleLike(0)
    with pytest.raises(ValueError, match="pyramid_keys=\\('P3',\\)"):
        SemanticFPNSegmenter(tiny_backbone(), 3, pyramid_keys=("P3",))
    with pytest.raises(ValueError, match="Received: Sequential"):
        SemanticFPNSegmenter(keras.Sequential([keras.layers.Dense(2)]), 3)
    with pytest.raises(ValueError, match="multiples of 32"):
        deeplabv3_segmenter(tiny_backbone((48, 48, 3)), 3)


def test_deeplabv3_plus_on_sepvit(tmp_path):
    import keras_hub

    keras.utils.set_random_seed(0)
    model = deeplabv3_segmenter(tiny_backbone((64, 64, 3)), 4)
    assert isinstance(model, keras_hub.models.DeepLabV3ImageSegmenter)
    assert model.backbone.low_level_feature_key == "P2"
    x = np.random.default_rng(0).uniform(-2, 2, (2, 64, 64, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    assert expected.shape == (2, 64, 64, 4)
    y = np.random.default_rng(1).integers(0, 4, (2, 64, 64))
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert 0.0 <= logs["mean_iou"] <= 1.0
    path = str(tmp_path / "deeplab.keras")
    model.save(path)
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(x, verbose=0), expected, atol=1e-5
    )


_OTHER_BACKEND = """
import sys, numpy as np, keras
sys.path.insert(0, sys.argv[1])
from test_segmentation import tiny_segmenter
model = tiny_segmenter(image_shape=(40, 56, 3), dropout=0.0)
model.load_weights(sys.argv[2])
x = np.load(sys.argv[3])
np.save(sys.argv[4], keras.ops.convert_to_numpy(model(x)))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.slow
def test_segmenter_runs_the_same_on_other_backends(backend, tmp_path):
    pytest.importorskip(backend)
    model = tiny_segmenter(image_shape=(40, 56, 3), dropout=0.0)
    weights = str(tmp_path / "w.weights.h5")
    model.save_weights(weights)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 40, 56, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = backend_env(backend)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _OTHER_BACKEND,
            os.path.dirname(__file__),
            weights,
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), atol=1e-4)


def test_poly_schedule_warmup_then_decay_and_round_trip():
    from keras_sepvit.training.schedules import PolyDecay

    schedule = PolyDecay(1e-3, total_steps=100, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 9, 10, 55, 100)]
    # Warm-up rises linearly to the poly curve (1e-3 at step 10), never above it.
    assert rates[0] == pytest.approx(1e-4) and rates[1] == pytest.approx(1e-3 * 0.91**0.9)
    assert rates[2] == pytest.approx(1e-3 * 0.9**0.9, rel=1e-5)
    assert rates[3] == pytest.approx(1e-3 * 0.45**0.9, rel=1e-5) and rates[4] == 0.0
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(clone(55)) == pytest.approx(rates[3])
    with pytest.raises(ValueError, match="total_steps=5, warmup_steps=5"):
        PolyDecay(1e-3, 5, 5)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["semantic_fpn", "upernet"])
def test_segmentation_demo_short_run(monkeypatch, head):
    from test_upernet import HEAD as UPERNET_HEAD

    from keras_sepvit.demos import segmentation as segmentation_demo
    from keras_sepvit.tasks.upernet import UperNetSegmenter

    monkeypatch.setattr(
        segmentation_demo,
        "build_backbone",
        lambda name, size, drop_path_rate=0.0: tiny_backbone((size, size, 3)),
    )
    tiny_heads = {"semantic_fpn": HEAD, "upernet": UPERNET_HEAD}
    monkeypatch.setattr(segmentation_demo, "HEADS", tiny_heads)
    data = segmentation_demo.make_data(num_train=16, num_test=4, image_size=32)
    assert data["train"][0].shape == (16, 32, 32, 3) and data["test"][1].shape == (4, 32, 32)
    row = segmentation_demo.train_and_evaluate(
        "sepvit_lite", data, steps=10, batch_size=4, head=head
    )
    model_type = SemanticFPNSegmenter if head == "semantic_fpn" else UperNetSegmenter
    assert isinstance(row["model"], model_type) and row["head"] == head
    assert row["steps"] == 10 and 0.0 <= row["miou"] <= 1.0
    assert row["per_class_iou"].shape == (11,)
    assert "| sepvit_lite |" in segmentation_demo.format_table([row])
