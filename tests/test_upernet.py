"""UperNet: shapes, PPM pooling against PyTorch's rule, the auxiliary loss.

Its TFLite and ONNX files: test_dense_export.py, test_dense_quantization.py.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

pytest.importorskip("keras_hub")

from conftest import backend_env  # noqa: E402
from test_segmentation import TINY  # noqa: E402  (the one tiny SepViT backbone config)

from keras_sepvit.hub import SepViTBackbone  # noqa: E402
from keras_sepvit.tasks import upernet  # noqa: E402
from keras_sepvit.tasks.upernet import (  # noqa: E402
    AuxiliaryFCNHead,
    PyramidPoolingModule,
    UperNetHead,
    UperNetSegmenter,
)

HEAD = dict(channels=16, auxiliary_channels=8)


def tiny_segmenter(num_classes=5, image_shape=None, **kwargs):
    keras.utils.set_random_seed(0)
    backbone = SepViTBackbone(**TINY, image_shape=image_shape)
    return UperNetSegmenter(backbone, num_classes, **{**HEAD, **kwargs})


def pyramid_inputs(height=16, width=24, channels=(8, 16, 16, 32), batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"P{i + 2}": rng.normal(size=(batch, -(-height // 2**i), -(-width // 2**i), c)).astype(
            "float32"
        )
        for i, c in enumerate(channels)
    }


def torch_adaptive_avg_pool(x, size):
    """NumPy reference of PyTorch's AdaptiveAvgPool2d (aten's start/end index rule)."""
    batch, height, width, channels = x.shape
    out = np.zeros((batch, size, size, channels), "float64")
    for i in range(size):
        h0, h1 = (i * height) // size, -(-((i + 1) * height) // size)
        for j in range(size):
            w0, w1 = (j * width) // size, -(-((j + 1) * width) // size)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def torch_bilinear(x, size):
    """NumPy reference of F.interpolate(mode="bilinear", align_corners=False)."""

    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        low = np.minimum(np.floor(src).astype(int), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), src - low

    (r0, r1, wr), (c0, c1, wc) = weights(x.shape[1], size[0]), weights(x.shape[2], size[1])
    rows = x[:, r0] * (1 - wr)[None, :, None, None] + x[:, r1] * wr[None, :, None, None]
    return rows[:, :, c0] * (1 - wc)[None, None, :, None] + rows[:, :, c1] * wc[None, None, :, None]


@pytest.mark.parametrize("size", [(64, 96), (75, 50)])
def test_segmenter_logits_at_the_input_size(size):
    model = tiny_segmenter()
    x = np.random.default_rng(0).uniform(-2, 2, (1, *size, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (1, *size, 5)


@pytest.mark.parametrize(
    "height, width, scale", [(7, 5, 3), (13, 11, 6), (2, 9, 6), (1, 1, 2), (8, 8, 3), (5, 5, 1)]
)
def test_adaptive_pooling_equals_pytorch_rule(height, width, scale):
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype("float32")
    expected = torch_adaptive_avg_pool(x.astype("float64"), scale)
    got = ops.convert_to_numpy(upernet.adaptive_average_pool(x, scale, "channels_last"))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The dynamic-size path (H, W unknown while tracing) computes the same.
    dynamic = tf.function(
        lambda t: upernet.adaptive_average_pool(t, scale, "channels_last"),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    np.testing.assert_allclose(dynamic(x).numpy(), expected, atol=1e-5)
    first = np.transpose(x, (0, 3, 1, 2))
    got = ops.convert_to_numpy(upernet.adaptive_average_pool(first, scale, "channels_first"))
    np.testing.assert_allclose(np.transpose(got, (0, 2, 3, 1)), expected, atol=1e-5)


@pytest.mark.parametrize("source, size", [((1, 1), (7, 5)), ((3, 3), (13, 11)), ((6, 6), (4, 9))])
def test_bilinear_resize_equals_pytorch_rule_and_image_resize(source, size):
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(2, *source, 3)).astype("float32")
    expected = torch_bilinear(x.astype("float64"), size)
    got = ops.convert_to_numpy(upernet.resize_bilinear(x, size, "channels_last"))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    resized = ops.image.resize(x, size, interpolation="bilinear", antialias=False)
    np.testing.assert_allclose(got, ops.convert_to_numpy(resized), atol=1e-5)
    dynamic = tf.function(
        lambda t, h, w: upernet.resize_bilinear(t, (h, w), "channels_last"),
        input_signature=[
            tf.TensorSpec((None, None, None, 3)),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((), tf.int32),
        ],
    )
    np.testing.assert_allclose(dynamic(x, *size).numpy(), expected, atol=1e-5)


def test_dynamic_size_model_equals_static_size_model():
    import tensorflow as tf

    model = tiny_segmenter()
    x = np.random.default_rng(1).uniform(-2, 2, (1, 50, 83, 3)).astype("float32")
    dynamic = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    np.testing.assert_allclose(dynamic(x).numpy(), model(x).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "layer, inputs",
    [
        (PyramidPoolingModule(8, (1, 2, 3, 6), name="ppm"), np.ones((2, 5, 7, 16), "float32")),
        (UperNetHead(5, channels=8, name="head"), pyramid_inputs()),
        (
            AuxiliaryFCNHead(5, channels=8, factor=16, name="aux"),
            [
                np.ones((1, 4, 6, 5), "float32"),
                np.ones((1, 2, 3, 16), "float32"),
                np.zeros((1, 30, 45, 3), "float32"),
            ],
        ),
    ],
    ids=["ppm", "head", "auxiliary"],
)
def test_layer_config_round_trip_keeps_outputs(layer, inputs):
    out = layer(inputs)
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config  # plain data only
    clone = type(layer).from_config(config)
    clone(inputs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    assert len(clone.weights) == len(layer.weights) > 0
    np.testing.assert_allclose(
        ops.convert_to_numpy(out), ops.convert_to_numpy(clone(inputs)), atol=1e-6
    )


def test_head_structure_follows_mmseg_uperhead():
    head = UperNetHead(7, channels=16)
    inputs = pyramid_inputs(height=64, width=96, channels=(8, 16, 24, 32))
    assert tuple(head(inputs).shape) == (2, 64, 96, 7)
    # PPM: one 1x1 branch per scale on P5 (32 channels), bottleneck over P5 + 4 x 16.
    assert [b[0].kernel.shape for b in head.ppm.branches] == [(1, 1, 32, 16)] * 4
    assert head.ppm.bottleneck[0].kernel.shape == (3, 3, 32 + 4 * 16, 16)
    # Laterals (1x1) and FPN convs (3x3) on P2..P4 only; fusion over 4 x 16 channels.
    assert {k: m[0].kernel.shape for k, m in head.laterals.items()} == {
        "P2": (1, 1, 8, 16),
        "P3": (1, 1, 16, 16),
        "P4": (1, 1, 24, 16),
    }
    assert sorted(head.fpn_convs) == ["P2", "P3", "P4"]
    assert head.fpn_bottleneck[0].kernel.shape == (3, 3, 4 * 16, 16)
    assert isinstance(head.drop, keras.layers.SpatialDropout2D) and head.drop.rate == 0.1
    # Every level reaches the logits: changing P5 alone changes them.
    changed = dict(inputs, P5=inputs["P5"] + 1.0)
    diff = ops.convert_to_numpy(head(inputs) - head(changed))
    assert np.abs(diff).max() > 1e-4


def _nchw(x):
    return (
        {k: np.transpose(v, (0, 3, 1, 2)) for k, v in x.items()}
        if isinstance(x, dict)
        else (np.transpose(x, (0, 3, 1, 2)))
    )


def test_channels_first_heads_equal_channels_last_and_run_channels_last_inside():
    """The heads run their convolutions channels-last inside (keras_sepvit.tasks.layout):
    TensorFlow has no NCHW Conv2D on CPUs where it leaves oneDNN off (an AVX2
    AMD EPYC), and there a channels-first head failed. Same weights, same numbers."""
    inputs = pyramid_inputs(height=20, width=28)
    last = UperNetHead(3, channels=8, data_format="channels_last")
    first = UperNetHead(3, channels=8, data_format="channels_first")
    expected = ops.convert_to_numpy(last(inputs))
    first(_nchw(inputs))
    first.set_weights(last.get_weights())  # kernels are laid out alike in both formats
    got = first(_nchw(inputs))
    assert tuple(got.shape) == first.compute_output_shape(
        {k: v.shape for k, v in _nchw(inputs).items()}
    )
    np.testing.assert_allclose(_nchw(expected), ops.convert_to_numpy(got), atol=1e-5)
    inside = [first.classifier, first.drop, first.ppm, *(m[0] for m in first.laterals.values())]
    assert {layer.data_format for layer in inside} == {"channels_last"}

    features, image = inputs["P4"], np.zeros((2, 20, 28, 3), "float32")
    last = AuxiliaryFCNHead(
        3, channels=8, factor=16, activation="softmax", data_format="channels_last"
    )
    first = AuxiliaryFCNHead(
        3, channels=8, factor=16, activation="softmax", data_format="channels_first"
    )
    expected = ops.convert_to_numpy(last.logits(features, image))
    first.logits(_nchw(features), _nchw(image))
    first.set_weights(last.get_weights())
    got = ops.convert_to_numpy(first.logits(_nchw(features), _nchw(image)))
    assert got.shape == (2, 3, 20, 28)
    np.testing.assert_allclose(got, _nchw(expected), atol=1e-5)


def test_auxiliary_head_runs_in_training_only_and_its_loss_is_weighted():
    model = tiny_segmenter(image_shape=(32, 48, 3), dropout=0.0)
    head = model.auxiliary_head
    assert isinstance(head, AuxiliaryFCNHead) and head.factor == 16
    x = np.random.default_rng(0).uniform(-2, 2, (2, 32, 48, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 5, (2, 32, 48))
    y[0, :4] = 255  # ignored by both losses
    model(x)
    assert head.take_logits() is None  # inference computes no auxiliary logits
    logits = model(x, training=True)
    auxiliary = head.take_logits()
    assert tuple(auxiliary.shape) == (2, 32, 48, 5)
    main, aux = float(model.loss(y, logits)), float(model.loss(y, auxiliary))
    assert abs(main - aux) > 1e-3
    model(x, training=True)
    total = float(model.compute_loss(x, y, logits, training=True))
    assert total == pytest.approx(main + 0.4 * aux, rel=1e-5)
    assert head.take_logits() is None  # taken once
    # fit's loss is the total; with a zero learning rate the weights stay put.
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(main + 0.4 * aux, rel=1e-4)
    # evaluate sees the main logits only (inference batch norm).
    evaluated = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert evaluated == pytest.approx(float(model.loss(y, model(x))), rel=1e-4)
    assert "auxiliary_head" not in [
        layer.name for layer in tiny_segmenter(auxiliary_loss_weight=0).layers
    ]


def test_segmenter_keras_round_trip_and_config(tmp_path):
    model = tiny_segmenter(image_shape=(64, 64, 3))
    x = np.random.default_rng(0).uniform(-2, 2, (2, 64, 64, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    config = model.get_config()
    for key, value in dict(
        num_classes=5, channels=16, pool_scales=[1, 2, 3, 6], auxiliary_loss_weight=0.4
    ).items():
        assert config[key] == value
    path = str(tmp_path / "upernet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, UperNetSegmenter)
    assert isinstance(loaded.backbone, SepViTBackbone)
    assert loaded.count_params() == model.count_params()
    assert isinstance(loaded.optimizer, keras.optimizers.AdamW)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(6e-5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
    rebuilt = UperNetSegmenter.from_config(model.get_config())
    assert rebuilt.count_params() == model.count_params()


def test_every_weight_gets_a_gradient():
    import tensorflow as tf

    model = tiny_segmenter(image_shape=(32, 32, 3), dropout=0.0)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 5, (2, 32, 32))
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x, training=True), training=True)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [
        w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g.numpy())
    ]
    # As in test_segmentation: single-window PSA gets no gradient (the authors' too).
    single_window_psa = ("attn/window_norm", "attn/pointwise_qk")
    assert [p for p in missing if not any(s in p for s in single_window_psa)] == []
    assert any(w.path.startswith("auxiliary_head") for w in model.trainable_weights)


def test_segmenter_on_mit_backbone():
    from keras_sepvit.demos.peers import mit_b0

    mit = mit_b0(
        (64, 64, 3),
        layerwise_depths=[1, 1, 1, 1],
        layerwise_num_heads=[1, 1, 1, 1],
        max_drop_path_rate=0.0,
        hidden_dims=[8, 8, 8, 8],
    )
    model = UperNetSegmenter(mit, 3, **HEAD)
    assert model.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape == (1, 64, 64, 3)


def test_arguments_are_validated_naming_the_value():
    with pytest.raises(ValueError, match="pool_scales=\\(1, 0\\)"):
        PyramidPoolingModule(8, (1, 0))
    with pytest.raises(ValueError, match="num_classes=0"):
        UperNetHead(0)
    with pytest.raises(ValueError, match="dropout=1.5"):
        UperNetHead(3, dropout=1.5)
    with pytest.raises(ValueError, match="auxiliary_loss_weight=-1"):
        tiny_segmenter(auxiliary_loss_weight=-1)
    with pytest.raises(ValueError, match="activation='relu'"):
        tiny_segmenter(activation="relu")
    with pytest.raises(ValueError, match="Received: loss="):
        tiny_segmenter().compile(loss={"logits": "mse"})


@pytest.mark.slow  # about 15 s on 2 cores, nearly all of it tracing the train step
def test_short_fit_lowers_the_loss_on_digit_scenes():
    import tensorflow as tf

    from keras_sepvit.demos.segmentation import make_data

    data = make_data(num_train=16, num_test=1, image_size=32)
    images, masks = data["train"]
    model = tiny_segmenter(num_classes=11, image_shape=(32, 32, 3), compile=False)
    model.compile(optimizer=keras.optimizers.AdamW(2e-3), ignore_class=None)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(8).repeat()
    before = float(model.loss(masks, model(images)))
    model.fit(dataset, steps_per_epoch=20, epochs=1, shuffle=False, verbose=0)
    after = float(model.loss(masks, model(images)))
    assert after < 0.8 * before, (before, after)


_OTHER_BACKEND = """
import sys, numpy as np, keras
sys.path.insert(0, sys.argv[1])
from test_upernet import tiny_segmenter
model = tiny_segmenter(image_shape=(32, 48, 3), dropout=0.0)
model.load_weights(sys.argv[2])
x = np.load(sys.argv[3])
np.save(sys.argv[4], keras.ops.convert_to_numpy(model(x)))
y = np.random.default_rng(1).integers(0, 5, (2, 32, 48))
logits = model(x, training=True)
aux = model.auxiliary_head.take_logits()
expected = float(model.loss(y, logits)) + 0.4 * float(model.loss(y, aux))
model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
loss = model.train_on_batch(x, y, return_dict=True)["loss"]
assert abs(loss - expected) <= 1e-4 * expected, (loss, expected)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.slow
def test_segmenter_and_auxiliary_loss_on_other_backends(backend, tmp_path):
    pytest.importorskip(backend)
    model = tiny_segmenter(image_shape=(32, 48, 3), dropout=0.0)
    weights = str(tmp_path / "w.weights.h5")
    model.save_weights(weights)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 32, 48, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = backend_env(backend)
    args = [weights, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND, os.path.dirname(__file__), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), atol=1e-4)


_MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras
sys.path.insert(0, sys.argv[1])
from test_upernet import tiny_segmenter
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = tiny_segmenter(image_shape=(32, 48, 3), dropout=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=[])
x = np.random.default_rng(0).uniform(-2, 2, (4, 32, 48, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 5, (4, 32, 48))
expected = []
for half in (slice(0, 2), slice(2, 4)):  # each replica's batch norm sees its half
    logits = model(x[half], training=True)
    aux = model.auxiliary_head.take_logits()
    expected.append(float(model.loss(y[half], logits)) + 0.4 * float(model.loss(y[half], aux)))
loss = model.fit(x, y, batch_size=4, shuffle=False, verbose=0).history["loss"][0]
assert abs(loss - np.mean(expected)) <= 1e-4 * np.mean(expected), (loss, expected)
print("ok", loss, expected)
"""


@pytest.mark.slow
def test_auxiliary_loss_per_replica_under_mirrored_strategy():
    # Replicas trace in threads: each must add its own auxiliary logits' loss.
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, os.path.dirname(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout
