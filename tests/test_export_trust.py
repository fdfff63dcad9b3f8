"""Export never passes off a wrong file: bad calibration data is refused
before any work, and a quantized file that disagrees with Keras is an error
that leaves nothing at the user's path."""

import os

import numpy as np
import pytest

import keras_sepvit
from keras_sepvit import export
from keras_sepvit.export import tflite_quantization


@pytest.fixture(scope="module")
def model():
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    rng = np.random.default_rng(0)
    for w in model.weights:  # decisive logits, as a trained model has
        w.assign(w.numpy() + rng.normal(scale=0.3, size=w.shape).astype("float32"))
    return model


def _images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize(
    "calibration,match",
    [
        (np.full((4, 32, 32, 3), np.nan, "float32"), "non-finite"),
        (np.zeros((4, 32, 32, 3), "float32"), "constant"),
        (_images() / 255.0, "0, 255"),
        (np.zeros((0, 32, 32, 3), "float32"), "no images"),
        (_images()[:, :16], r"input shape \(32, 32, 3\)"),
    ],
)
@pytest.mark.parametrize("quantization", ["int8", "int8-full"])
def test_bad_calibration_data_is_refused_before_work(model, tmp_path, calibration, match,
                                                     quantization):  # fmt: skip
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=match):
        export.to_tflite(model, str(path), quantization, calibration)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_quantized_file_that_disagrees_with_keras_is_an_error_and_not_left(
    model, tmp_path, monkeypatch
):
    """A quantizer that writes a wrong file (here: another model's weights)
    is caught by the comparison with Keras on the calibration images."""
    other = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    rng = np.random.default_rng(5)
    for w in other.weights:
        w.assign(w.numpy() + rng.normal(scale=0.3, size=w.shape).astype("float32"))
    wrong = export.to_tflite(other, str(tmp_path / "other" / "other.tflite"))

    def broken(float_path, out_path, *args, **kwargs):
        with open(wrong, "rb") as src, open(out_path, "wb") as dst:
            dst.write(src.read())

    monkeypatch.setattr(tflite_quantization, "quantize_int8_xnnpack", broken)
    path = tmp_path / "int8.tflite"
    with pytest.raises(RuntimeError, match="agrees with the Keras model"):
        export.to_tflite(model, str(path), "int8", _images(32, seed=1))
    assert sorted(os.listdir(tmp_path)) == ["other"]  # no file, no temporary left
    # The same file passes when the user opts out of the check. (A good file
    # passes it: tests/test_quantization.py, on the trained digits model.)
    export.to_tflite(model, str(path), "int8", _images(32, seed=1), min_agreement=0)
    assert path.exists()


def test_export_command_refuses_a_model_that_does_not_fit_the_report(tmp_path, load_script):
    script = load_script("export", "export_model")
    other_classes = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    other_classes.save(tmp_path / "four.keras")
    with pytest.raises(ValueError, match="10 classes"):
        script.main(["--model", str(tmp_path / "four.keras"), "--out", str(tmp_path / "o")])
    any_size = keras_sepvit.SepViTLite(input_shape=(None, None, 3), classes=10)
    any_size.save(tmp_path / "any.keras")
    with pytest.raises(ValueError, match="static, square input size"):
        script.main(["--model", str(tmp_path / "any.keras"), "--out", str(tmp_path / "o")])
    ten = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10)
    ten.save(tmp_path / "ten.keras")
    with pytest.raises(ValueError, match="--calibration must be >= 1"):
        script.main(["--model", str(tmp_path / "ten.keras"), "--out", str(tmp_path / "o"),
                     "--calibration", "0"])  # fmt: skip
    assert not (tmp_path / "o").exists()
