"""TFLite files as the edge issue defines them: static batch 1 by default, the
input normalisation folded into the stem (exact against the authors'
reference), every node in XNNPACK, and an "int8" file whose attention
scores XNNPACK takes in int8 (zero point 0 on both operands) and whose
probabilities @ values products stay float32 (faster there)."""

import keras
import numpy as np
import pytest

import keras_sepvit
from keras_sepvit import export
from keras_sepvit.export import inference, profiling, tflite_quantization


@pytest.fixture(scope="module")
def lite_with_preprocessing(reference_weights):
    """The authors' SepViT-Lite weights in the default model (normalises inside)."""
    model = keras_sepvit.SepViTLite(classifier_activation=None)
    return keras_sepvit.load_official_weights(model, reference_weights)


def _raw_images(model, normalised):
    """The [0, 255] images whose normalisation is the reference input."""
    norm = model.get_layer("normalization")
    return (normalised - np.asarray(norm.offset)) / np.asarray(norm.scale)


def test_float32_file_is_batch_1_folded_and_exact(lite_with_preprocessing, reference_io, tmp_path):
    raw = _raw_images(lite_with_preprocessing, reference_io["input_nhwc"]).astype("float32")
    path = export.to_tflite(
        lite_with_preprocessing, str(tmp_path / "f32.tflite"), sample_inputs=raw
    )
    runner = export.TFLiteRunner(path)
    assert list(runner.input["shape_signature"]) == [1, 224, 224, 3]
    assert np.abs(runner(raw) - reference_io["logits"]).max() <= 1e-4
    # The normalisation is gone: nothing runs before the stem's padding and conv.
    ops = runner.interpreter._get_ops_details()
    assert [op["op_name"] for op in ops[:3]] == ["CONCATENATION", "CONCATENATION", "CONV_2D"]
    assert sum(op["op_name"] == "CONV_2D" for op in ops) == 4  # stem + 3 patch embeddings
    # No run-time work the weights can carry: the window tokens' norm1 is a
    # constant (no MEAN over a (1, nW, 1, C) token slice), and PWA's second
    # shortcut is (A + I) @ v (no ADD over the (1, h, nW, P * d) values).
    tensors = runner.interpreter.get_tensor_details()
    first_inputs = [(op["op_name"], tuple(tensors[op["inputs"][0]]["shape"])) for op in ops]
    assert not [s for name, s in first_inputs if name == "MEAN" and len(s) == 4 and s[2] == 1]
    assert not [s for name, s in first_inputs if name == "ADD" and s[-1] in (49 * 32, 196 * 32)]
    taken, total, partitions = profiling.xnnpack_delegation(path)
    assert (taken, partitions) == (total, 1), (taken, total, partitions)


def test_int8_file_for_xnnpack(lite_with_preprocessing, reference_io, tmp_path):
    raw = _raw_images(lite_with_preprocessing, reference_io["input_nhwc"]).astype("float32")
    calibration = np.concatenate(
        [raw, np.random.default_rng(0).uniform(0, 255, (14, 224, 224, 3)).astype("float32")]
    )
    path = export.to_tflite(  # random weights: top-1 agreement on noise means nothing
        lite_with_preprocessing, str(tmp_path / "int8.tflite"), "int8", calibration, raw,
        min_agreement=0,
    )  # fmt: skip
    runner = export.TFLiteRunner(path)
    # What the README promises: float32 input and output.
    assert runner.input["dtype"] == np.float32 and runner.output["dtype"] == np.float32
    tensors = runner.interpreter.get_tensor_details()
    ops = runner.interpreter._get_ops_details()
    matmuls = [op for op in ops if op["op_name"] == "BATCH_MATMUL"]
    weighted = set(tflite_quantization.activation_weighted_matmuls(path))
    assert len(matmuls) == 34 and len(weighted) == 17, (len(matmuls), weighted)
    for op in matmuls:
        dtypes = [tensors[index]["dtype"] for index in op["inputs"]]
        if tensors[op["outputs"][0]]["name"] in weighted:  # probabilities @ values: float32
            assert dtypes == [np.float32] * 2, (tensors[op["outputs"][0]]["name"], dtypes)
            continue
        for index in op["inputs"]:  # q k^T: int8 with zero point 0, XNNPACK's condition
            assert tensors[index]["dtype"] == np.int8
            assert not tensors[index]["quantization_parameters"]["zero_points"].any()
    products = [
        op for op in ops if op["op_name"] in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
    ]
    weights = [tensors[op["inputs"][1]]["dtype"] for op in products]
    assert weights and all(dtype == np.int8 for dtype in weights)
    # The stem in int8: space-to-depth, then a 2x2 convolution over 48
    # channels, its pixels asymmetric with a range that holds [0, 255].
    stem = next(op for op in ops if op["op_name"] == "CONV_2D")
    assert tuple(tensors[stem["inputs"][1]]["shape"]) == (32, 2, 2, 48)
    pixels = tensors[stem["inputs"][0]]["quantization_parameters"]
    (scale,), (zero,) = pixels["scales"], pixels["zero_points"]
    assert scale * (-128 - zero) <= 0.0 and scale * (127 - zero) >= 255.0, (scale, zero)
    kinds = {op["op_name"] for op in ops}
    assert {"SOFTMAX", "GELU", "RSQRT"} <= kinds  # float32 in XNNPACK, by design
    # Window attention as exp(scores) @ v / sum, no max pass: the 11 DWA
    # blocks' scores are int8 within +-80 (PWA's 6 keep softmax).
    names = [tensors[op["outputs"][0]]["name"] for op in ops if op["op_name"] == "EXP"]
    assert len(names) == 11 and not tflite_quantization.unbounded_exponents(path), names
    taken, total, partitions = profiling.xnnpack_delegation(path)
    assert (taken, partitions) == (total, 1), (taken, total, partitions)
    # Close to the float model on the reference inputs (random weights: a
    # loose check; the accuracy bars are on the trained digits model).
    got, expected = runner(raw), reference_io["logits"]
    assert np.abs(got - expected).max() < 0.25 * np.abs(expected).max()


@pytest.mark.slow
def test_batch_option(tmp_path):
    model = keras_sepvit.SepViTLite(input_shape=(64, 96, 3), classes=5)
    x = np.random.default_rng(0).uniform(0, 255, (5, 64, 96, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    for batch_size, signature in ((None, -1), (2, 2)):
        path = export.to_tflite(
            model, str(tmp_path / f"b{batch_size}.tflite"), sample_inputs=x, batch_size=batch_size
        )
        runner = export.TFLiteRunner(path)
        assert runner.input["shape_signature"][0] == signature
        np.testing.assert_allclose(runner(x), expected, atol=1e-5)  # 5 images: 2 + 2 + 1
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"batch_size={bad!r}"):
            export.to_tflite(model, str(tmp_path / "bad.tflite"), batch_size=bad)


def test_inference_model_folds_exactly_and_leaves_the_source_alone():
    model = keras_sepvit.SepViTLite(input_shape=(64, 96, 3), classes=5)
    rng = np.random.default_rng(1)
    for w in model.weights:  # non-zero biases and tokens, so every fold matters
        w.assign(w.numpy() + rng.normal(scale=0.05, size=w.shape).astype("float32"))
    before = [w.copy() for w in model.get_weights()]
    x = rng.uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    x[:, :4] = 0.0  # the border the padding touches
    copy = inference.inference_model(model, batch_size=None)
    assert inference.stem_names(copy) == ["stage1_embed_meanpad", "stage1_embed_conv_folded"]
    np.testing.assert_allclose(
        copy.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )
    # The int8 file's stem: space-to-depth and a 2x2 convolution, the same sums.
    s2d = inference.inference_model(model, batch_size=None, space_to_depth_stem=True)
    assert inference.space_to_depth_stem_names(s2d) == [
        "stage1_embed_meanpad_s2d", "stage1_embed_space_to_depth", "stage1_embed_conv_s2d"
    ] and inference.stem_names(s2d) == []  # fmt: skip
    assert s2d.get_layer("stage1_embed_conv_s2d").kernel.shape == (2, 2, 48, 32)
    np.testing.assert_allclose(
        s2d.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )
    assert inference.space_to_depth_stem_names(copy) == []
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    attention = [
        layer
        for layer in model._flatten_layers(recursive=True)
        if isinstance(layer, keras_sepvit.SeparableSelfAttention)
    ]
    assert attention and all(layer.scale != 1.0 for layer in attention)
    # Without preprocessing there is nothing to fold into the stem.
    plain = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), include_preprocessing=False)
    assert inference.stem_names(inference.inference_model(plain)) == [
        "stage1_embed_pad",
        "stage1_embed_conv",
    ]
    for bad in (-1, True):  # a bool is an int to Python, not a batch size
        with pytest.raises(ValueError, match=f"batch_size={bad!r}"):
            inference.inference_model(model, batch_size=bad)
    with pytest.raises(ValueError, match="Dense"):
        inference.inference_model(keras.layers.Dense(3))


def _tiny_lite(query_gain):
    keras.utils.set_random_seed(0)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4, classifier_activation=None)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras_sepvit.layers.SeparableSelfAttention):
            kernel = layer.qkv.kernel.numpy()
            kernel[:, : kernel.shape[0]] *= query_gain  # the query columns
            layer.qkv.kernel.assign(kernel)
    return model


def _exp_of_scores(path):
    """The EXP ops fed by a DEQUANTIZE: attention as exp(scores) @ v / sum."""
    ops = export.TFLiteRunner(path).interpreter._get_ops_details()
    producer = {t: op["op_name"] for op in ops for t in op["outputs"]}
    return [
        op for op in ops if op["op_name"] == "EXP" and producer[op["inputs"][0]] == "DEQUANTIZE"
    ]


@pytest.mark.slow
def test_int8_stem_clips_no_pixel_the_calibration_missed(tmp_path):
    """Calibrated on mid-grey images only, the int8 stem's pixels still span
    [0, 255] (a camera's black and white are not clipped), and the file
    agrees with Keras on images that use that whole range."""
    rng = np.random.default_rng(0)
    grey = rng.uniform(96, 160, (8, 32, 32, 3)).astype("float32")
    model = _tiny_lite(1.0)
    path = export.to_tflite(model, str(tmp_path / "grey.tflite"), "int8", grey, grey[:2],
                            min_agreement=0)  # fmt: skip
    runner = export.TFLiteRunner(path)
    tensors = runner.interpreter.get_tensor_details()
    stem = next(op for op in runner.interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
    pixels = tensors[stem["inputs"][0]]["quantization_parameters"]
    assert tuple(pixels["scales"]) == (1.0,) and tuple(pixels["zero_points"]) == (-128,), pixels
    full = np.concatenate([np.zeros((1, 32, 32, 3)), np.full((1, 32, 32, 3), 255.0)])
    full = np.concatenate([full, rng.uniform(0, 255, (2, 32, 32, 3))]).astype("float32")
    expected = model.predict(full, verbose=0)
    assert np.abs(runner(full) - expected).max() < 0.25 * np.abs(expected).max()


@pytest.mark.slow
def test_int8_attention_without_max_pass_only_for_bounded_scores(monkeypatch, tmp_path):
    """The "int8" file drops softmax's max pass (exp, then normalise after the
    product) where the calibrated scores stay within +-80, with softmax's
    numbers; larger scores (queries scaled up) keep softmax."""
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    model = _tiny_lite(1.0)
    fast = export.to_tflite(model, str(tmp_path / "exp.tflite"), "int8", images, images[:2],
                            min_agreement=0)  # fmt: skip
    # Stages 2-3's 8 blocks (stage 1's padded windows mask keys and keep
    # softmax; stage 4 has one key).
    assert len(_exp_of_scores(fast)) == 8 and not tflite_quantization.unbounded_exponents(fast)
    with monkeypatch.context() as m:  # the same model with softmax: the fallback
        m.setattr(tflite_quantization, "unbounded_exponents", lambda path: ["all"])
        softmax = export.to_tflite(model, str(tmp_path / "softmax.tflite"), "int8", images,
                                   images[:2], min_agreement=0)  # fmt: skip
    assert not _exp_of_scores(softmax)
    # Softmax's numbers to rounding; a rounding can move a later int8 value by
    # a step, and with it an image's logits (measured: 3 of 16 images here
    # with the int8 stem, 83% of the logits equal to 1e-4; 91% with a float
    # stem), each by at most a few hundredths of the largest logit.
    got, want = export.TFLiteRunner(fast)(images), export.TFLiteRunner(softmax)(images)
    close = np.abs(got - want) <= 1e-4 * np.abs(want).max()
    assert close.mean() >= 0.75 and (got.argmax(-1) == want.argmax(-1)).all(), close.mean()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()

    scaled = export.to_tflite(_tiny_lite(300.0), str(tmp_path / "scaled.tflite"), "int8",
                              images, images[:2], min_agreement=0)  # fmt: skip
    assert not _exp_of_scores(scaled) and not tflite_quantization.unbounded_exponents(scaled)
    assert np.isfinite(export.TFLiteRunner(scaled)(images)).all()
