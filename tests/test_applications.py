"""The keras.applications contract, on the four SepViT variants and both data formats.

The first six tests are keras' own `keras/src/applications/applications_test.py`
cases with their bodies kept (SepViT for the model list, `keras_sepvit.model` for
the application module). Two changes: `test_application_base` loads
`weights=None` and checks the decoding, not the label, because no ImageNet
weights exist for SepViT (`weights="imagenet"` is checked to refuse clearly),
and no channels_first case is skipped: SepViT works channels-last inside on
every backend and device. The tests after them hold back more of the same
contract (keras.applications and `imagenet_utils` conventions).
"""

import inspect
import json
import os

import keras
import numpy as np
import pytest

import keras_sepvit
from keras_sepvit import model as sepvit_app

# (application, channels of the last stage, its module), as keras' MODEL_LIST.
# Small and Base take seconds per build: their cases run with the slow tests.
MODEL_LIST = [
    pytest.param(keras_sepvit.SepViTLite, 256, sepvit_app, id="SepViTLite"),
    pytest.param(keras_sepvit.SepViTTiny, 768, sepvit_app, id="SepViTTiny"),
    pytest.param(
        keras_sepvit.SepViTSmall, 768, sepvit_app, id="SepViTSmall", marks=pytest.mark.slow
    ),
    pytest.param(
        keras_sepvit.SepViTBase, 1024, sepvit_app, id="SepViTBase", marks=pytest.mark.slow
    ),
]
DATA_FORMATS = ["channels_first", "channels_last"]


@pytest.fixture(params=DATA_FORMATS)
def image_data_format(request):
    """keras' `backend.set_image_data_format(image_data_format)`, restored after."""
    original = keras.config.image_data_format()
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format(original)


@pytest.fixture
def channels_first():
    original = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format(original)


def _image(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


# --- keras' applications_test.py ------------------------------------------------


@pytest.mark.parametrize("app,last_dim,_", MODEL_LIST)
def test_application_notop_variable_input_channels(app, last_dim, _, image_data_format):
    # Test compatibility with 1 channel
    if image_data_format == "channels_first":
        input_shape = (1, None, None)
        correct_output_shape = [None, last_dim, None, None]
    else:
        input_shape = (None, None, 1)
        correct_output_shape = [None, None, None, last_dim]

    model = app(weights=None, include_top=False, input_shape=input_shape)
    output_shape = list(model.outputs[0].shape)
    assert output_shape == correct_output_shape

    # Test compatibility with 4 channels
    if image_data_format == "channels_first":
        input_shape = (4, None, None)
    else:
        input_shape = (None, None, 4)
    model = app(weights=None, include_top=False, input_shape=input_shape)
    output_shape = list(model.outputs[0].shape)
    assert output_shape == correct_output_shape


@pytest.mark.parametrize("app,_,app_module", MODEL_LIST)
def test_application_base(app, _, app_module, image_data_format):
    # Can be instantiated with default arguments
    model = app(weights=None)

    # Can run an inference on a test image
    if image_data_format == "channels_first":
        shape = model.input_shape[2:4]
        x = _image((1, 3) + tuple(shape))
    else:
        shape = model.input_shape[1:3]
        x = _image((1,) + tuple(shape) + (3,))

    x = app_module.preprocess_input(x)
    preds = model.predict(x, verbose=0)
    decoded = app_module.decode_predictions(preds)[0]
    names = [p[1] for p in decoded]
    # No ImageNet weights: the decoding is checked, not the label.
    assert len(names) == 5 and decoded[0][2] == preds[0].max()
    assert decoded[0][1] == app_module.decode_predictions(preds, top=1000)[0][0][1]

    # Can be serialized and deserialized
    config = keras.saving.serialize_keras_object(model)
    reconstructed_model = keras.saving.deserialize_keras_object(config)
    assert len(model.weights) == len(reconstructed_model.weights)


@pytest.mark.parametrize("app,last_dim,_", MODEL_LIST)
def test_application_notop_custom_input_shape(app, last_dim, _, image_data_format):
    if image_data_format == "channels_first":
        input_shape = (3, 123, 123)
        last_dim_axis = 1
    else:
        input_shape = (123, 123, 3)
        last_dim_axis = -1
    model = app(weights=None, include_top=False, input_shape=input_shape)
    output_shape = list(model.outputs[0].shape)
    assert output_shape[last_dim_axis] == last_dim


@pytest.mark.parametrize("app,last_dim,_", MODEL_LIST)
def test_application_notop_custom_input_tensor(app, last_dim, _, image_data_format):
    if image_data_format == "channels_first":
        input_shape = (4, 200, 200)
        last_dim_axis = 1
    else:
        input_shape = (200, 200, 4)
        last_dim_axis = -1

    inputs_custom = keras.Input(shape=input_shape, name="custom_input")
    inputs_custom = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs_custom)
    model = app(weights=None, include_top=False, input_tensor=inputs_custom)
    output_shape = list(model.outputs[0].shape)
    assert output_shape[last_dim_axis] == last_dim


@pytest.mark.parametrize("app,last_dim,_", MODEL_LIST)
def test_application_pooling(app, last_dim, _, image_data_format):
    model = app(weights=None, include_top=False, pooling="max")
    output_shape = list(model.outputs[0].shape)
    assert output_shape == [None, last_dim]


@pytest.mark.parametrize("app,_,__", MODEL_LIST)
def test_application_classifier_activation(app, _, __):
    model = app(weights=None, include_top=True, classifier_activation="softmax")
    last_layer_act = model.layers[-1].activation.__name__
    assert last_layer_act == "softmax"


# --- held back: the rest of the keras.applications contract (SepViT-Lite) --------


def test_imagenet_weights_refuse_with_the_way_to_load_weights():
    with pytest.raises(ValueError, match=r"no ImageNet weights.*load_official_weights"):
        keras_sepvit.SepViTLite(weights="imagenet")


@pytest.mark.parametrize("include_top,expected", [(False, None), (True, 224)])
def test_default_input_shape(image_data_format, include_top, expected):
    model = keras_sepvit.SepViTLite(include_top=include_top)
    spatial = (expected, expected)
    if image_data_format == "channels_first":
        assert model.input_shape == (None, 3) + spatial
    else:
        assert model.input_shape == (None,) + spatial + (3,)


@pytest.mark.parametrize("kwargs", [dict(include_top=False), dict(classes=7)])
@pytest.mark.slow
def test_channels_first_equals_channels_last_transposed(tmp_path, kwargs):
    image = _image((2, 64, 96, 3), seed=1)
    last = keras_sepvit.SepViTLite(input_shape=(None, None, 3), **kwargs)
    for w in last.weights:  # every weight matters
        w.assign(w + np.random.default_rng(2).normal(scale=0.02, size=w.shape))
    expected = last.predict(image, verbose=0)
    last.save_weights(str(tmp_path / "last.weights.h5"))
    last.save(str(tmp_path / "last.keras"))
    original = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        for weights in ("last.weights.h5", "last.keras"):
            first = keras_sepvit.SepViTLite(
                input_shape=(3, None, None), weights=str(tmp_path / weights), **kwargs
            )
            got = first.predict(image.transpose(0, 3, 1, 2), verbose=0)
            if got.ndim == 4:
                got = got.transpose(0, 2, 3, 1)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        pyramid = keras_sepvit.feature_pyramid(first)
        levels = pyramid(image.transpose(0, 3, 1, 2))
        assert tuple(levels["P3"].shape) == (2, 64, 8, 12)
        # A channels-first model saved and loaded keeps its layout.
        first.save(str(tmp_path / "first.keras"))
        loaded = keras.saving.load_model(str(tmp_path / "first.keras"))
        np.testing.assert_array_equal(
            loaded.predict(image.transpose(0, 3, 1, 2), verbose=0),
            first.predict(image.transpose(0, 3, 1, 2), verbose=0),
        )
    finally:
        keras.config.set_image_data_format(original)


def test_channels_last_model_runs_under_a_channels_first_setting():
    model = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), classes=5)
    image = _image((1, 64, 64, 3))
    expected = keras.ops.convert_to_numpy(model(image))
    original = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:  # an eager call runs every layer's call() again under the new setting
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(image)), expected)
    finally:
        keras.config.set_image_data_format(original)


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_normalise_inside(channels):
    image = _image((2, 64, 64, channels), seed=3)
    raw = keras_sepvit.SepViTLite(input_shape=(None, None, channels), include_top=False)
    bare = keras_sepvit.SepViTLite(
        input_shape=(None, None, channels), include_top=False, include_preprocessing=False
    )
    bare.set_weights(raw.get_weights())
    np.testing.assert_allclose(
        raw.predict(image, verbose=0),
        bare.predict(keras_sepvit.normalize_images(image), verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )
    normalized = keras.ops.convert_to_numpy(keras_sepvit.normalize_images(image))
    mean, std = np.mean(sepvit_app.IMAGENET_MEAN), np.mean(sepvit_app.IMAGENET_STD)
    np.testing.assert_allclose(normalized, (image / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_weights_for_other_channels_name_the_stem(tmp_path, suffix):
    path = str(tmp_path / f"rgb{suffix}")
    rgb = keras_sepvit.SepViTLite(include_top=False)
    rgb.save_weights(path) if suffix == ".weights.h5" else rgb.save(path)
    with pytest.raises(ValueError, match=r"stage1_embed_conv.*\(7, 7, 1, 32\).*\(7, 7, 3, 32\)"):
        keras_sepvit.SepViTLite(include_top=False, input_shape=(None, None, 1), weights=path)


@pytest.mark.parametrize("size", [(123, 123), (32, 32), (33, 97), (250, 40)])
@pytest.mark.slow
def test_any_size_from_32(size):
    model = keras_sepvit.SepViTLite(input_shape=size + (3,), include_top=False)
    dynamic = keras_sepvit.SepViTLite(input_shape=(None, None, 3), include_top=False)
    dynamic.set_weights(model.get_weights())
    image = _image((2,) + size + (3,), seed=4)
    expected = model.predict(image, verbose=0)
    side = tuple(-(-s // 32) for s in size)
    assert expected.shape == (2,) + side + (256,) and np.isfinite(expected).all()
    assert model.output_shape == (None,) + side + (256,)
    np.testing.assert_allclose(dynamic.predict(image, verbose=0), expected, rtol=0, atol=1e-5)


def test_sizes_below_32_are_refused():
    with pytest.raises(ValueError, match=r"at least 32.*input_shape=\(31, 64, 3\)"):
        keras_sepvit.SepViTLite(input_shape=(31, 64, 3))


def test_plain_backend_tensor_as_input_tensor_is_refused():
    tensor = keras.ops.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match="input_tensor"):
        keras_sepvit.SepViTLite(input_tensor=tensor)


def test_input_tensor_of_another_rank_is_refused():
    with pytest.raises(ValueError, match=r"input_tensor\.shape=\(None, 64, 3\)"):
        keras_sepvit.SepViTLite(input_tensor=keras.Input((64, 3)))


def test_input_tensor_and_input_shape_must_agree():
    with pytest.raises(ValueError, match="input_shape"):
        keras_sepvit.SepViTLite(input_tensor=keras.Input((64, 64, 3)), input_shape=(96, 96, 3))
    model = keras_sepvit.SepViTLite(
        input_tensor=keras.Input((64, 64, 3)), input_shape=(None, None, 3), classes=3
    )
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_in_both_formats(image_data_format, pooling):
    shape = (3, 64, 64) if image_data_format == "channels_first" else (64, 64, 3)
    model = keras_sepvit.SepViTLite(include_top=False, pooling=pooling, input_shape=shape)
    assert model.output_shape == (None, 256)
    assert model.predict(_image((1,) + shape), verbose=0).shape == (1, 256)


@pytest.mark.parametrize("classes", [7, 0, None, "many"])
def test_classes_ignored_without_top(classes):
    model = keras_sepvit.SepViTLite(include_top=False, pooling="avg", classes=classes)
    assert model.output_shape == (None, 256)


def test_classifier_activation_none_and_callable():
    logits = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), classes=4, classifier_activation=None)
    assert logits.layers[-1].activation.__name__ == "linear"
    custom = keras_sepvit.SepViTLite(
        input_shape=(64, 64, 3), classes=4, classifier_activation=keras.activations.sigmoid
    )
    custom.set_weights(logits.get_weights())
    image = _image((2, 64, 64, 3), seed=5)
    z = logits.predict(image, verbose=0)
    np.testing.assert_allclose(custom.predict(image, verbose=0), 1 / (1 + np.exp(-z)), atol=1e-6)


def test_missing_weights_file_is_a_value_error():
    with pytest.raises(ValueError, match="/no/such/file.weights.h5"):
        keras_sepvit.SepViTLite(weights="/no/such/file.weights.h5")


def test_model_names():
    assert keras_sepvit.SepViTLite(input_shape=(64, 64, 3)).name == "sepvit_lite"
    for variant, fn in sepvit_app.VARIANTS.items():
        assert fn.__name__ == f"SepViT{variant.capitalize()}"
        assert inspect.signature(fn).parameters["name"].default == f"sepvit_{variant}"
    model = keras_sepvit.SepViTLite(name="my_sepvit", input_shape=(64, 64, 3))
    assert model.name == "my_sepvit"


def test_config_and_keras_file_round_trips(tmp_path):
    model = keras_sepvit.SepViTLite(input_shape=(None, None, 3), classes=6)
    image = _image((2, 64, 96, 3), seed=6)
    expected = model.predict(image, verbose=0)
    clone = keras.Model.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(image, verbose=0), expected)
    path = str(tmp_path / "lite.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.name == model.name
    np.testing.assert_array_equal(loaded.predict(image, verbose=0), expected)


def test_preprocess_input_with_data_format():
    image = _image((1, 32, 32, 3))
    for data_format in (None, "channels_last", "channels_first"):
        np.testing.assert_array_equal(
            keras_sepvit.preprocess_input(image, data_format=data_format), image
        )
    with pytest.raises(ValueError, match="data_format='nhwc'"):
        keras_sepvit.preprocess_input(image, data_format="nhwc")


def test_decode_predictions_offline_imagenet_index():
    preds = np.full((2, 1000), 1e-4, "float32")
    preds[0, [386, 101, 385]] = [0.7, 0.2, 0.05]
    preds[1, 0] = 0.9
    decoded = keras_sepvit.decode_predictions(preds, top=3)
    assert [(c, n) for c, n, _ in decoded[0]] == [
        ("n02504458", "African_elephant"),
        ("n01871265", "tusker"),
        ("n02504013", "Indian_elephant"),
    ]
    assert decoded[0][0][2] == pytest.approx(0.7)
    assert decoded[1][0][:2] == ("n01440764", "tench") and len(decoded[1]) == 3
    assert len(keras_sepvit.decode_predictions(preds)[0]) == 5
    # Package data, read without a network.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "keras_sepvit", "resources", "imagenet_class_index.json")
    with open(path) as f:
        index = json.load(f)
    assert len(index) == 1000 and len({v[0] for v in index.values()}) == 1000


def test_decode_predictions_for_other_classes_and_bad_shapes():
    preds = np.array([[0.1, 0.7, 0.2]], "float32")
    decoded = keras_sepvit.decode_predictions(preds, top=2, class_names=["cat", "dog", "owl"])
    assert decoded == [[("1", "dog", preds[0, 1]), ("2", "owl", preds[0, 2])]]
    with pytest.raises(ValueError, match=r"\(samples, 1000\).*class_names.*\(1, 3\)"):
        keras_sepvit.decode_predictions(preds)
    with pytest.raises(ValueError, match="top=0"):
        keras_sepvit.decode_predictions(np.zeros((1, 1000)), top=0)
