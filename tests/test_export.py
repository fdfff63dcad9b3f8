"""Edge export: every file is loaded in its runtime and compared (LiteRT, ONNX Runtime)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_sepvit
from keras_sepvit import export


@pytest.fixture(scope="module")
def reference_model(reference_weights):
    model = keras_sepvit.SepViTLite(include_preprocessing=False, classifier_activation=None)
    return keras_sepvit.load_official_weights(model, reference_weights)


def test_tflite_float32_matches_reference_with_builtin_ops(reference_model, reference_io, tmp_path):
    x = reference_io["input_nhwc"]
    path = export.to_tflite(reference_model, str(tmp_path / "lite.tflite"), sample_inputs=x)
    got = export.TFLiteRunner(path)(x)
    assert np.abs(got - reference_io["logits"]).max() <= 1e-4
    ops = export.tflite_ops(path)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    assert {"BATCH_MATMUL", "SOFTMAX", "CONV_2D", "DEPTHWISE_CONV_2D"} <= ops


@pytest.mark.slow
def test_onnx_matches_reference_and_passes_checker(reference_model, reference_io, tmp_path):
    import onnx
    import onnxruntime as ort

    x = reference_io["input_nhwc"]
    path = export.to_onnx(reference_model, str(tmp_path / "lite.onnx"), sample_inputs=x)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    op_types = {node.op_type for node in proto.graph.node}
    assert "Erfc" not in op_types and "Erf" in op_types  # exact GELU via Erf
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    assert np.abs(got - reference_io["logits"]).max() <= 1e-4


@pytest.mark.slow
def test_float16_and_dynamic_range(reference_model, reference_io, tmp_path):
    x = reference_io["input_nhwc"]
    expected = reference_model.predict(x, verbose=0)
    fp16 = export.to_tflite(
        reference_model, str(tmp_path / "fp16.tflite"), quantization="float16", sample_inputs=x
    )
    assert np.abs(export.TFLiteRunner(fp16)(x) - expected).max() <= 1e-2
    dynamic = export.to_tflite(
        reference_model, str(tmp_path / "dyn.tflite"), quantization="dynamic", sample_inputs=x
    )
    assert os.path.getsize(dynamic) < os.path.getsize(fp16)
    assert np.isfinite(export.TFLiteRunner(dynamic)(x)).all()
    for path in (fp16, dynamic):
        assert not [op for op in export.tflite_ops(path) if op.startswith("Flex")]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(quantization="int4"), "quantization='int4'"),
        (dict(quantization="int8"), "representative_data"),
        (dict(quantization="int16x8"), "representative_data"),
    ],
)
def test_bad_export_arguments_fail_before_work(kwargs, match, tmp_path, monkeypatch):
    from keras_sepvit.export import tflite

    def work(*args, **kwargs):  # building the export copy or converting
        raise AssertionError("the export started before the arguments were checked")

    monkeypatch.setattr(tflite, "_source", work)
    monkeypatch.setattr(tflite, "_convert", work)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10)
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=match):
        export.to_tflite(model, str(path), **kwargs)
    assert not path.exists()


def test_unwritable_paths_and_dynamic_shapes_are_refused(tmp_path):
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="a_file"):
        export.to_tflite(model, str(blocker / "m.tflite"))
    with pytest.raises(ValueError, match="a_file"):
        export.to_onnx(model, str(blocker / "m.onnx"))
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        export.to_tflite(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="opset=7"):
        export.to_onnx(model, str(tmp_path / "m.onnx"), opset=7)
    dynamic = keras_sepvit.SepViTLite(input_shape=(None, None, 3), classes=10)
    with pytest.raises(ValueError, match="static input size"):
        export.to_tflite(dynamic, str(tmp_path / "d.tflite"))


@pytest.mark.parametrize("size", [(224, 224), (64, 96)])
def test_model_graph_stays_at_rank_5(size):
    """A 6-D tensor (naive window partition) would need Flex ops in TFLite."""
    model = keras_sepvit.SepViTLite(input_shape=size + (3,))
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1,) + size + (3,), tf.float32)).graph
    ranks = {
        (op.type, len(t.shape))
        for op in graph.get_operations()
        for t in op.outputs
        if t.shape.rank is not None and t.shape.rank > 5
    }
    assert not ranks


@pytest.mark.slow
def test_run_tflite_example_classifies_image_files(tmp_path, load_script):
    import keras

    # This test is about the example script, not quantization accuracy (that is
    # test_quantization.py on a trained model): an untrained 4-class model on noise
    # has near-tied classes, so int8 may flip some. A fixed seed makes the model the
    # same on every run, and min_agreement=0.5 still refuses a broken file.
    keras.utils.set_random_seed(0)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    rng = np.random.default_rng(0)
    for w in model.weights:  # a trained model has no all-zero tokens/biases (see below)
        w.assign(w.numpy() + rng.normal(scale=0.02, size=w.shape).astype("float32"))
    images = rng.integers(0, 255, (3, 40, 56, 3), dtype="uint8")
    files = []
    for i, image in enumerate(images):
        files.append(str(tmp_path / f"img{i}.png"))
        keras.utils.save_img(files[-1], image)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    calibration = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    for quantization in (None, "int8"):
        path = export.to_tflite(
            model,
            str(tmp_path / f"m_{quantization}.tflite"),
            quantization=quantization,
            representative_data=calibration,
            min_agreement=0.5,
        )
        results = load_script("examples", "run_tflite").main(
            [path, *files, "--labels", str(labels), "--top-k", "2"]
        )
        assert [r[0] for r in results] == files
        for _, named in results:
            assert len(named) == 2 and {n for n, _ in named} <= {"cat", "dog", "bird", "fish"}
        # Same top-1 as the Keras model on the same resized pixels (float file).
        if quantization is None:
            runner = load_script("examples", "run_tflite")
            x = np.stack([runner.load_image(f, 32, 32) for f in files])
            keras_top = model.predict(x, verbose=0).argmax(-1)
            names = ["cat", "dog", "bird", "fish"]
            assert [named[0][0] for _, named in results] == [names[i] for i in keras_top]


@pytest.mark.slow
def test_a_crashing_quantized_file_is_a_clear_error_not_a_crash(tmp_path, monkeypatch):
    """LiteRT's quantized kernels can abort the process (SIGABRT, no Python
    exception), as they did on an untrained SepViT before LayerNorm took its
    variance with MUL. to_tflite runs quantized files in a child process
    first and raises instead; here the child aborts on purpose."""
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)  # zero tokens/biases
    calibration = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    for quantization in ("int8", "int8-full"):  # an untrained model converts and runs now
        path = export.to_tflite(  # untrained: its logits tie, so top-1 agreement means nothing
            model, str(tmp_path / f"{quantization}.tflite"), quantization, calibration,
            min_agreement=0,
        )  # fmt: skip
        assert np.isfinite(export.TFLiteRunner(path)(calibration[:2])).all()
    monkeypatch.setattr("keras_sepvit.export.tflite._SMOKE_RUN", "import os; os.abort()")
    with pytest.raises(RuntimeError, match="crashed running"):
        export.to_tflite(model, str(tmp_path / "abort.tflite"), "int8-full", calibration)


@pytest.mark.slow
def test_export_command_reports_every_format(tmp_path, load_script, monkeypatch):
    """The export CLI on a fresh model: formats are written and compared; a
    format that fails (its LiteRT run aborts, forced here) is reported as
    failed without losing the rest."""
    monkeypatch.setattr("keras_sepvit.export.tflite._SMOKE_RUN", "import os; os.abort()")
    out = tmp_path / "export"
    rows = load_script("export", "export_model").main(
        ["--variant", "lite", "--image-size", "32", "--out", str(out),
         "--formats", "float32,int8-full,onnx", "--runs", "2", "--calibration", "8"]
    )  # fmt: skip
    formats = [r["format"] for r in rows]
    assert formats == ["keras (TF, reference)", "tflite float32 (LiteRT)", "onnx (ONNX Runtime)"]
    for r in rows[1:]:
        assert r["max_abs_diff"] < 1e-4 and r["top1_agreement"] == 1.0
        assert r["latency_ms_1t"] > 0 and r["latency_ms_2t"] > 0
    report = (out / "report.md").read_text()
    assert "| int8-full | failed:" in report and "tflite float32" in report
