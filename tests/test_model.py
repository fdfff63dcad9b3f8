"""Model contracts, parameterised over the variants (keras.applications style)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sepvit
from keras_sepvit.macs import count_macs
from keras_sepvit.model import VARIANTS

# Written out from the paper (Table 1) and the authors' code (window sizes,
# window counts at 224), not read from MODEL_CONFIGS, so a table typo fails.
EXPECTED = {
    "lite": dict(depths=[1, 2, 6, 2], channels=[32, 64, 128, 256], heads=[1, 2, 4, 8]),
    "tiny": dict(depths=[1, 2, 6, 2], channels=[96, 192, 384, 768], heads=[3, 6, 12, 24]),
    "small": dict(depths=[1, 2, 14, 2], channels=[96, 192, 384, 768], heads=[3, 6, 12, 24]),
    "base": dict(depths=[1, 2, 14, 2], channels=[128, 256, 512, 1024], heads=[4, 8, 16, 32]),
}
AUTHORS_PARAMS = {"lite": 3.661, "tiny": 31.183, "small": 46.571, "base": 82.377}
AUTHORS_GMACS = {"lite": 0.568, "tiny": 4.519, "small": 7.455, "base": 13.055}


def _window_sizes(depths):
    return [[7], [7, 14], [7, 14] * (depths[2] // 2), [7, 7]]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_model(request):
    return request.param, VARIANTS[request.param]()


def _blocks(model, stage):
    return [layer for layer in model.layers if layer.name.startswith(f"stage{stage + 1}_block")]


def test_built_model_matches_table(variant_model):
    variant, model = variant_model
    expected = EXPECTED[variant]
    sizes = _window_sizes(expected["depths"])
    for stage in range(4):
        blocks = _blocks(model, stage)
        channels = expected["channels"][stage]
        assert len(blocks) == expected["depths"][stage]
        assert model.get_layer(f"stage{stage + 1}_embed_conv").filters == channels
        assert [b.window_size for b in blocks] == sizes[stage]
        for block, ws in zip(blocks, sizes[stage]):
            assert block.num_heads == expected["heads"][stage]
            assert block.attn.num_heads == expected["heads"][stage]
            assert block.attn.head_dim == channels // expected["heads"][stage]
            assert block.fc1.units == 4 * channels
            windows_at_224 = (224 // (4 * 2**stage) // ws) ** 2
            # Window tokens and PWA exactly where the reference has them.
            assert block.attn.pointwise == (windows_at_224 > 1)
            if windows_at_224 > 1:
                assert tuple(block.window_tokens.tokens.shape) == (1, windows_at_224, 1, channels)
            else:
                assert block.window_tokens is None
                assert block.attention == ("global" if stage == 3 else "window")
        assert model.get_layer(f"stage{stage + 1}_output").output.shape[-1] == channels


def test_parameter_count_equals_authors(variant_model):
    variant, model = variant_model
    assert round(model.count_params() / 1e6, 3) == AUTHORS_PARAMS[variant]


def test_macs_within_3_percent_of_authors(variant_model):
    variant, model = variant_model
    gmacs = count_macs(model) / 1e9
    assert abs(gmacs - AUTHORS_GMACS[variant]) / AUTHORS_GMACS[variant] < 0.03, gmacs


def test_gradient_reaches_every_trainable_weight(variant_model):
    # No stochastic depth: a dropped branch legitimately gets no gradient.
    variant, _ = variant_model
    model = VARIANTS[variant](drop_path_rate=0.0)
    image = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(image, training=True)[:, :10] ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    dead = [w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g)]
    assert not dead


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [(64, 96), (None, None)])
def test_feature_pyramid_every_variant(variant, size):
    backbone = VARIANTS[variant](include_top=False, input_shape=size + (3,))
    pyramid = keras_sepvit.feature_pyramid(backbone)
    out = pyramid(np.zeros((1, 64, 96, 3), "float32"))
    assert sorted(out) == ["P2", "P3", "P4", "P5"]
    for level, stride, channels in zip(
        ["P2", "P3", "P4", "P5"], [4, 8, 16, 32], EXPECTED[variant]["channels"]
    ):
        assert tuple(out[level].shape) == (1, 64 // stride, 96 // stride, channels)


def test_no_top_none_spatial_custom_channels():
    model = keras_sepvit.SepViTLite(
        include_top=False, input_shape=(None, None, 5), include_preprocessing=False
    )
    assert model.output_shape == (None, None, None, 256)
    assert model(np.zeros((2, 64, 96, 5), "float32")).shape == (2, 2, 3, 256)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_output_size(pooling):
    model = keras_sepvit.SepViTLite(include_top=False, pooling=pooling, input_shape=(64, 64, 3))
    assert model.output_shape == (None, 256)


def test_classifier_activation_and_classes():
    image = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    probs = keras_sepvit.SepViTLite(classes=7, input_shape=(64, 64, 3))
    logits = keras_sepvit.SepViTLite(classes=7, input_shape=(64, 64, 3), classifier_activation=None)
    logits.set_weights(probs.get_weights())
    p, z = np.asarray(probs(image)), np.asarray(logits(image))
    assert p.shape == (2, 7)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p, tf.nn.softmax(z).numpy(), rtol=1e-4, atol=1e-6)


def test_include_preprocessing_equals_normalize_images():
    image = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    raw = keras_sepvit.SepViTLite(input_shape=(64, 64, 3))
    bare = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), include_preprocessing=False)
    bare.set_weights(raw.get_weights())
    np.testing.assert_allclose(
        raw(image), bare(keras_sepvit.normalize_images(image)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(keras_sepvit.preprocess_input(image), image)


def test_drop_path_rate_linear_over_blocks():
    model = keras_sepvit.SepViTTiny()
    rates = [
        layer.drop_path_rate
        for layer in model.layers
        if isinstance(layer, keras_sepvit.SepViTBlock)
    ]
    np.testing.assert_allclose(rates, np.linspace(0, 0.2, 11))
    assert keras_sepvit.SepViTTiny(drop_path_rate=0.0).layers[5].drop_path_rate == 0.0


def test_keras_save_load_identical(tmp_path):
    model = keras_sepvit.SepViTLite(input_shape=(64, 96, 3), classes=10)
    for w in model.weights:  # non-zero tokens/biases so that every weight matters
        w.assign(w + np.random.default_rng(0).normal(scale=0.01, size=w.shape))
    image = np.random.default_rng(3).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    path = str(tmp_path / "lite.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(image, verbose=0), loaded.predict(image, verbose=0))


def test_same_weights_load_at_every_resolution(tmp_path):
    source = keras_sepvit.SepViTLite(classes=10)
    path = str(tmp_path / "lite.weights.h5")
    source.save_weights(path)
    for shape in [(64, 96, 3), (96, 64, 3), (None, None, 3), (448, 320, 3)]:
        model = keras_sepvit.SepViTLite(classes=10, input_shape=shape, weights=path)
        for a, b in zip(model.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(a, b)
    keras_path = str(tmp_path / "lite.keras")
    source.save(keras_path)
    model = keras_sepvit.SepViTLite(classes=10, input_shape=(64, 64, 3), weights=keras_path)
    np.testing.assert_array_equal(model.get_weights()[3], source.get_weights()[3])


def test_predict_on_tf_data():
    model = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), classes=5)
    images = np.random.default_rng(4).uniform(0, 255, (6, 64, 64, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
    np.testing.assert_allclose(
        model.predict(ds, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_builds_and_runs(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = keras_sepvit.SepViTLite(input_shape=(64, 96, 3), classes=10)
        block = model.get_layer("stage1_block1")
        assert block.compute_dtype == policy.split("_")[1]
        assert block.window_tokens.tokens.dtype == "float32"
        out = model(np.random.default_rng(5).uniform(0, 255, (2, 64, 96, 3)).astype("float32"))
        assert out.dtype == "float32" and np.isfinite(np.asarray(out)).all()
        np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, rtol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


_LITE = dict(keras_sepvit.MODEL_CONFIGS["lite"])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(input_shape=(224, 16, 3)), ValueError, r"at least 32.*input_shape=\(224, 16, 3\)"),
        (dict(input_shape=(224, 224)), ValueError, r"input_shape=\(224, 224\)"),
        (dict(input_shape=(224, 224, None)), ValueError, "channel count"),
        (dict(input_shape=("64", "64", 3)), ValueError, r"input_shape=\('64', '64', 3\)"),
        (dict(input_shape=(64.0, 64, 3)), ValueError, r"input_shape=\(64.0, 64, 3\)"),
        (dict(pooling="mean", include_top=False), ValueError, "pooling='mean'"),
        (dict(classes=0), ValueError, "classes=0"),
        (dict(classes=True), ValueError, "classes=True"),
        (dict(classes=5.0), ValueError, "classes=5.0"),
        (dict(classifier_activation="nope"), ValueError, "classifier_activation='nope'"),
        (dict(weights="imagenet"), ValueError, "weights='imagenet'"),
        (dict(weights="/no/such/file.weights.h5"), ValueError, "/no/such/file"),
        (dict(weights="model.pth"), ValueError, "load_official_weights"),
        (dict(drop_path_rate=1.5), ValueError, r"\[0, 1\).*drop_path_rate=1.5"),
        (dict(drop_path_rate=-0.1), ValueError, "drop_path_rate=-0.1"),
        (dict(window_token="random"), ValueError, "window_token='random'"),
        (dict(window_representation="cls"), ValueError, "window_representation='cls'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        keras_sepvit.SepViTLite(**kwargs)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_heads=(0, 2, 4, 8)), r"positive ints.*num_heads=\(0, 2, 4, 8\)"),
        (dict(num_heads=(3, 2, 4, 8)), r"32 channels, not divisible by its 3 heads"),
        (dict(window_sizes=((0,), (7, 14), (7, 14) * 3, (7, 7))), "positive ints"),
        (dict(window_sizes=((7,), (7, 14), (7, 14) * 3)), "needs 4 entries"),
        (dict(window_sizes=((7,), (7, 14), (7, 14) * 3, (7, 7), (7,))), "needs 4 entries"),
        (dict(window_sizes=((7,), (7,), (7, 14) * 3, (7, 7))), "Stage 2 has 2 blocks but 1"),
        (dict(window_sizes=7), "window_sizes=7"),
        (dict(depths=(1, 2, 6)), r"needs 4 entries.*depths=\(1, 2, 6\)"),
        (dict(channels=(32, 64, 128, 256.0)), "positive ints"),
        (dict(mlp_ratio=0), "mlp_ratio=0"),
        (dict(attention="local"), "attention='local'"),
    ],
)
def test_bad_configurations_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        keras_sepvit.SepViT(**{**_LITE, **overrides}, input_shape=(64, 64, 3))


def test_numpy_ints_are_accepted():
    model = keras_sepvit.SepViTLite(
        classes=np.int64(5), input_shape=(np.int64(64), np.int32(96), np.int64(3))
    )
    assert model.output_shape == (None, 5) and model.input_shape == (None, 64, 96, 3)
    assert isinstance(model.get_layer("predictions").units, int)


def test_predict_needs_a_batch_axis_and_takes_empty_batches():
    model = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), classes=5)
    image = np.zeros((64, 64, 3), "float32")
    with pytest.raises(ValueError, match=r"shape \(64, 64, 3\).*x\[None\]"):
        model.predict(image, verbose=0)
    assert model.predict(image[None], verbose=0).shape == (1, 5)
    empty = model.predict(np.zeros((0, 64, 64, 3), "float32"), verbose=0)
    assert empty.shape == (0, 5) and empty.dtype == np.float32
    backbone = keras_sepvit.SepViTLite(include_top=False, input_shape=(None, None, 3))
    assert backbone.predict(np.zeros((0, 123, 96, 3)), verbose=0).shape == (0, 4, 3, 256)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", "half"])
def test_unreadable_keras_file_is_named(tmp_path, content):
    path = tmp_path / "broken.keras"
    if content == "half":
        keras_sepvit.SepViTLite(input_shape=(64, 64, 3)).save(str(path))
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken\.keras.*(truncated|damaged)") as info:
        keras_sepvit.SepViTLite(weights=str(path))
    assert "File not found" not in str(info.value) and "do not fit" not in str(info.value)


def test_truncated_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.weights.h5"
    keras_sepvit.SepViTLite(input_shape=(64, 64, 3)).save_weights(str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"broken\.weights\.h5.*truncated"):
        keras_sepvit.SepViTLite(weights=str(path))


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_saved_classifier_loads_into_a_backbone(tmp_path, suffix):
    source = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), classes=10)
    for w in source.weights:
        w.assign(w + np.random.default_rng(7).normal(scale=0.01, size=w.shape))
    path = str(tmp_path / f"lite{suffix}")
    source.save(path) if suffix == ".keras" else source.save_weights(path)
    backbone = keras_sepvit.SepViTLite(include_top=False, pooling="avg", weights=path)
    for layer in backbone.layers:
        for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # Not the other way round: a backbone file lacks the classifier.
    path = str(tmp_path / f"backbone{suffix}")
    backbone.save(path) if suffix == ".keras" else backbone.save_weights(path)
    with pytest.raises(ValueError, match="do not fit"):
        keras_sepvit.SepViTLite(classes=10, weights=path)


def test_weights_of_another_variant_are_refused(tmp_path):
    path = str(tmp_path / "tiny.weights.h5")
    keras_sepvit.SepViTTiny(input_shape=(64, 64, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"do not fit sepvit_lite"):
        keras_sepvit.SepViTLite(weights=path)
    keras_path = str(tmp_path / "tiny.keras")
    keras_sepvit.SepViTTiny(input_shape=(64, 64, 3)).save(keras_path)
    with pytest.raises(ValueError, match=r"do not fit sepvit_lite"):
        keras_sepvit.SepViTLite(weights=keras_path)


@pytest.mark.parametrize(
    "kwargs,delta",
    [
        # Fixed zero tokens / no tokens: the learnable tokens' weights go.
        (dict(window_token="zero"), -(64 * 32 + 16 * 64 + 4 * 64 + 3 * 4 * 128)),
        (dict(window_representation="avg_pool"), -(64 * 32 + 16 * 64 + 4 * 64 + 3 * 4 * 128)),
        # ws x ws depthwise conv + bias per PWA block instead of the tokens.
        (
            dict(window_representation="dw_conv"),
            -(64 * 32 + 16 * 64 + 4 * 64 + 3 * 4 * 128)
            + (49 + 1) * 32
            + (49 + 1) * 64
            + (196 + 1) * 64
            + 3 * (49 + 1) * 128,
        ),
    ],
)
def test_ablation_switches_land(kwargs, delta):
    default = keras_sepvit.SepViTLite(input_shape=(64, 64, 3))
    model = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), **kwargs)
    assert model.count_params() - default.count_params() == delta
    image = np.random.default_rng(6).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    assert np.isfinite(np.asarray(model(image))).all()
    block = model.get_layer("stage1_block1")
    assert block.window_token == kwargs.get("window_token", "learnable")
    assert block.attn.window_representation == kwargs.get("window_representation", "token")


def test_variant_docstring_example_runs():
    import doctest

    for fn in VARIANTS.values():
        test = doctest.DocTestParser().get_doctest(
            fn.__doc__, {"keras_sepvit": keras_sepvit}, fn.__name__, None, 0
        )
        runner = doctest.DocTestRunner()
        runner.run(test)
        assert runner.failures == 0 and runner.tries > 0
        break  # one build is enough: the docstring is shared


def test_input_tensor_is_used_as_the_input():
    image = keras.Input((64, 96, 3), name="my_image")
    model = keras_sepvit.SepViTLite(input_tensor=image, include_top=False, pooling="avg")
    assert model.inputs[0] is image
    assert model.output_shape == (None, 256)
    # A Keras tensor from another layer: the model is built on the source input.
    source = keras.Input((64, 64, 3))
    scaled = keras.layers.Rescaling(1.0)(source)
    model = keras_sepvit.SepViTLite(input_tensor=scaled, classes=3)
    assert model.inputs[0] is source and model.output_shape == (None, 3)
