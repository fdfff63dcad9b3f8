"""Weights, calibration data and image files that do not fit are refused whole (issue 10).

A refusal changes nothing (no weight assigned, no range moved) and names the
key, file or batch at fault; the on-device example decodes image files to the
training pipeline's pixels and reports an unreadable file without stopping.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_sepvit
from keras_sepvit import convert, data, export
from keras_sepvit.export import qat


def _tiny(classes=4):
    return keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=classes)


_TO_PYTORCH = {  # the inverse of each layout transform of convert.py
    "_linear": lambda w: w.T,
    "_conv": lambda w: w.transpose(3, 2, 0, 1),
    "_depthwise": lambda w: w.transpose(2, 3, 0, 1),
    "_same": lambda w: w,
}


def _state_of(model):
    """The PyTorch-layout state dict that `load_official_weights` maps onto `model`."""
    return {
        key: _TO_PYTORCH[transform.__name__](variable.numpy())
        for key, (variable, transform) in convert.official_weight_map(model).items()
    }


def _randomized(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(scale=0.05, size=w.shape).astype("float32"))
    return model


def _assert_unchanged(model, before):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# --- load_official_weights ------------------------------------------------------------


def test_official_weights_round_trip_through_the_state_dict():
    source = _randomized(_tiny())
    state = {k: v.astype("float64") for k, v in _state_of(source).items()}  # any float dtype
    target = keras_sepvit.load_official_weights(_tiny(), state)
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "key, value, match",
    [
        # head.bias is assigned last: before, 189/190 tensors were written first.
        ("head.bias", np.array(["a", "b", "c", "d"]), r"head\.bias: file \(4,\) <U1, expected"),
        ("head.bias", np.arange(4), r"head\.bias: file \(4,\) int64, expected \(4,\) float"),
        ("head.bias", None, r"head\.bias: file \(\) object, expected \(4,\) float"),
        ("head.bias", np.array([0.0, np.nan, 0.0, np.inf], "float32"), r"head\.bias: 2 of 4"),
        (
            "patch_embeds.0.proj.weight",  # rank 2 for a conv weight: no transpose error
            np.zeros((32, 27), "float32"),
            r"patch_embeds\.0\.proj\.weight: file \(32, 27\) float32, expected \(32, 3, 7, 7\)",
        ),
        (
            "blocks.0.0.mlp.fc1.weight",
            np.zeros((7, 32), "float32"),
            r"blocks\.0\.0\.mlp\.fc1\.weight: file \(7, 32\) float32, expected \(128, 32\)",
        ),
    ],
)
def test_official_weights_are_checked_whole_before_any_is_assigned(key, value, match):
    state = _state_of(_randomized(_tiny()))
    assert key in state
    state[key] = value
    model = _tiny()
    before = model.get_weights()
    with pytest.raises(ValueError, match=match) as error:
        keras_sepvit.load_official_weights(model, state)
    assert "No weight was changed" in str(error.value)
    _assert_unchanged(model, before)


# --- QAT --------------------------------------------------------------------------------


def _calibration(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


def _with_nan(images, index=(1, 5, 7, 2)):
    images = images.copy()
    images[index] = np.nan
    return images


@pytest.mark.parametrize(
    "calibration, match",
    [
        (_with_nan(_calibration()), r"batch 0 holds 1 NaN or infinite"),
        (
            tf.data.Dataset.from_tensor_slices(
                (
                    np.concatenate([_calibration(), np.full((1, 32, 32, 3), np.inf, "float32")]),
                    np.zeros(5),
                )
            ).batch(2),
            r"batch 2 holds 3072 NaN or infinite",
        ),
        (np.zeros((0, 32, 32, 3), "float32"), "received no images"),
        ([], "received no images"),
        (np.zeros((2, 16, 16, 3), "float32"), r"shape \(2, 16, 16, 3\).*\(32, 32, 3\)"),
        (np.zeros((2, 32, 32), "float32"), r"shape \(1, 2, 32, 32\)"),
        ([["a", "b"]], "not an array of numbers"),
    ],
)
def test_quantize_model_refuses_bad_calibration_data(calibration, match):
    model = _tiny()
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        qat.quantize_model(model, calibration)
    _assert_unchanged(model, before)


def test_quantize_model_refuses_non_finite_ranges_and_calibrate_keeps_the_old_ones():
    model = _randomized(_tiny())
    qat_model = qat.quantize_model(model, _calibration())
    layers = qat.quantizers(qat_model)
    ranges = [[getattr(layer, n).numpy() for n in qat.RANGE_NAMES] for layer in layers]
    assert all(np.isfinite(r).all() for r in ranges)
    with pytest.raises(ValueError, match="NaN or infinite"):
        qat.calibrate(qat_model, _with_nan(_calibration()))
    with pytest.raises(ValueError, match="received no images"):
        qat.calibrate(qat_model, [])
    assert ranges == [[getattr(layer, n).numpy() for n in qat.RANGE_NAMES] for layer in layers]
    # A model whose weights hold a NaN: the measured ranges are NaN, refused.
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="NaN or infinite activation ranges"):
        qat.quantize_model(model, _calibration())


def test_float_weights_checks_every_weight_before_copying():
    qat_model = qat.quantize_model(_randomized(_tiny()), _calibration())
    other = _tiny(classes=5)  # same count of weights, only the head differs (copied last)
    assert len(other.weights) == len(_tiny().weights)
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"predictions.*\(256, 5\) <- .*\(256, 4\)"):
        qat.float_weights(qat_model, other)
    _assert_unchanged(other, before)
    fitting = qat.float_weights(qat_model, _tiny())
    source = [v for v in qat_model.weights if not qat._is_range(v)]
    for a, b in zip(source, fitting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- examples/run_tflite.py -------------------------------------------------------------


def _write_png16(path, pixels):
    tf.io.write_file(path, tf.io.encode_png(tf.constant(pixels)))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """One file per decoder path, in an image-folder dataset `root/train/a/*`."""
    root = tmp_path_factory.mktemp("images")
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    paths = {"root": str(root)}

    def add(name, save):
        paths[name] = str(folder / name)
        save(paths[name])

    add("grey16.png", lambda p: _write_png16(p, rng.integers(0, 65536, (32, 32, 1), "uint16")))
    add("rgb16.png", lambda p: _write_png16(p, rng.integers(0, 65536, (32, 32, 3), "uint16")))
    add("rgba16.png", lambda p: _write_png16(p, rng.integers(0, 65536, (32, 32, 4), "uint16")))
    add("rgb.png", image.save)
    add("grey.png", lambda p: image.convert("L").save(p))
    add("rgba.png", lambda p: Image.fromarray(rng.integers(0, 256, (32, 32, 4), "uint8")).save(p))
    add("palette.png", lambda p: image.convert("P", palette=Image.ADAPTIVE).save(p))
    add("bilevel.png", lambda p: image.convert("1").save(p))
    add("rgb.bmp", image.save)
    add("animated.gif", lambda p: image.save(p, save_all=True, append_images=[image.rotate(90)]))
    add("rgb.jpg", lambda p: image.save(p, quality=90))
    add("grey.jpg", lambda p: image.convert("L").save(p, quality=90))
    return paths


def test_run_tflite_decodes_files_to_the_training_pipelines_pixels(image_files, load_script):
    runner = load_script("examples", "run_tflite")
    split = data.load_split(image_files["root"], "train")
    names = sorted(name for name in image_files if name != "root")
    assert split.num_examples == len(names)  # in file-name order, as `names`
    for name, (pixels, _) in zip(names, split.dataset.as_numpy_iterator()):
        path = image_files[name]
        got = runner.load_image(path, 32, 32, crop_fraction=1.0)  # the files' own size: no resize
        assert got.shape == pixels.shape, name
        # JPEG too: Pillow's IDCT is TensorFlow's INTEGER_ACCURATE one, which the
        # pipeline uses (decode_image's default INTEGER_FAST is a few levels off).
        np.testing.assert_array_equal(got, pixels, err_msg=name)
    # A 16-bit PNG at the model's size reaches the model as the pipeline's pixels,
    # not clipped to {0, 255}.
    grey16 = runner.load_image(image_files["grey16.png"], 32, 32, crop_fraction=1.0)
    decoded = tf.io.decode_image(tf.io.read_file(image_files["grey16.png"]), channels=3)
    np.testing.assert_array_equal(grey16, decoded.numpy().astype("float32"))
    assert len(np.unique(grey16)) > 100


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lite") / "tiny.tflite")
    return export.to_tflite(_randomized(_tiny()), path)


def test_run_tflite_reports_unreadable_files_and_classifies_the_others(
    tflite_file, image_files, tmp_path, load_script, capsys
):
    runner = load_script("examples", "run_tflite")
    missing = str(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(image_files["rgb.png"], "rb").read()[:200])
    tiff = tmp_path / "image.tiff"
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(tiff)
    good = [image_files["rgb.png"], image_files["grey16.png"]]
    bad = [missing, str(text), str(truncated), str(tiff)]
    with pytest.raises(SystemExit) as exit_:
        runner.main([tflite_file, good[0], *bad, good[1], "--top-k", "2"])
    assert exit_.value.code not in (0, None)
    assert str(exit_.value.code).startswith("4 of 6 files could not be read")
    out, err = capsys.readouterr()
    for path in good:
        assert f"{path}: " in out
    assert "over 2 images" in out
    for path in bad:
        assert f"{path}: skipped" in err and path in str(exit_.value.code)
    assert "TIFF image" in err


@pytest.mark.parametrize(
    "labels, args, match",
    [
        ("cat\ndog\nbird\n", [], r"has 3 labels, the model 4 classes"),
        ("cat\ndog\nbird\nfish\nbackground\n", [], r"has 5 labels, the model 4 classes"),
        (None, ["--labels", "/nonexistent/labels.txt"], "cannot read --labels"),
        ("a\nb\nc\nd\n", ["--top-k", "0"], r"--top-k: must be at least 1. Received: 0"),
        ("a\nb\nc\nd\n", ["--top-k", "-1"], r"--top-k: must be at least 1. Received: -1"),
    ],
)
def test_run_tflite_refuses_bad_arguments_before_running(
    tflite_file, image_files, tmp_path, load_script, capsys, labels, args, match
):
    runner = load_script("examples", "run_tflite")
    if labels is not None:
        (tmp_path / "labels.txt").write_text(labels)
        args = ["--labels", str(tmp_path / "labels.txt"), *args]
    with pytest.raises(SystemExit) as exit_:
        runner.main([tflite_file, image_files["rgb.png"], *args])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing was classified
    assert len(re.findall(match, err)) == 1, err


def test_run_tflite_labels_file_with_trailing_blank_lines_is_accepted(
    tflite_file, image_files, tmp_path, load_script
):
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\nfish\n\n\n")
    results = load_script("examples", "run_tflite").main(
        [tflite_file, image_files["rgb.png"], "--labels", str(tmp_path / "labels.txt")]
    )
    assert {name for name, _ in results[0][1]} <= {"cat", "dog", "bird", "fish"}
