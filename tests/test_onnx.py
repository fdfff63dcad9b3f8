"""ONNX export: the rewritten graph (keras_sepvit.export.onnx_graph) in ONNX Runtime.

The files are run, never timed here (benchmarks/onnx_latency.py times them).
"""

import collections
import os

import numpy as np
import pytest

import keras_sepvit
from keras_sepvit import export
from keras_sepvit.export import onnx_graph


@pytest.fixture(scope="module")
def reference_model(reference_weights):
    model = keras_sepvit.SepViTLite(include_preprocessing=False, classifier_activation=None)
    return keras_sepvit.load_official_weights(model, reference_weights)


def _ort_nodes(path, tmp_path):
    """Op counts of the graph ONNX Runtime runs after its (portable) fusions."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    return collections.Counter(node.op_type for node in graph.node)


@pytest.mark.parametrize("batch_size", [1, None])
@pytest.mark.slow
def test_lite_matches_reference_and_ort_fuses_layer_norm_and_gelu(
    reference_model, reference_io, tmp_path, batch_size
):
    import onnx

    x = reference_io["input_nhwc"]  # 2 images: a static batch-1 file runs them one by one
    path = export.to_onnx(
        reference_model, str(tmp_path / "lite.onnx"), sample_inputs=x, batch_size=batch_size
    )
    got = export.ONNXRunner(path)(x)
    assert np.abs(got - reference_io["logits"]).max() <= 1e-4
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert proto.graph.input[0].name == "image"
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch_dim.dim_value or None) == batch_size
    in_file = collections.Counter(node.op_type for node in proto.graph.node)
    assert "Erfc" not in in_file and in_file["Erf"] == 17  # exact GELU, 17 of them
    fused = _ort_nodes(path, tmp_path)
    # 39 LayerNorms in the model; ORT folds the 6 whose input is a constant
    # (the window tokens' norm1) in the static file. No elementwise LayerNorm is left.
    assert fused["LayerNormalization"] == (33 if batch_size else 39) and fused["Sqrt"] == 0, fused
    assert fused["Gelu"] == 17 and fused["Erf"] == 0, fused
    if batch_size == 1:  # the static-shape rewrites: no q/k/v slices, Dense as Gemm
        assert in_file["Gemm"] == 79 and in_file["Slice"] == 12, in_file
        assert fused["Cast"] == 0 and fused["Shape"] == 0


def test_int8_runs_and_agrees_with_float(reference_model, reference_io, tmp_path):
    import onnx

    x = reference_io["input_nhwc"]
    rng = np.random.default_rng(0)
    calibration = np.concatenate([x, x[:, :, ::-1], x + rng.normal(0, 0.1, x.shape)])
    path = export.to_onnx(
        reference_model,
        str(tmp_path / "lite_int8.onnx"),
        sample_inputs=x,
        batch_size=1,
        quantization="int8",
        representative_data=calibration.astype("float32"),
    )
    ops = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0  # QDQ format
    got = export.ONNXRunner(path)(x)
    expected = reference_io["logits"]
    assert np.isfinite(got).all() and got.shape == expected.shape
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert relative < 0.1, relative


@pytest.mark.parametrize(
    "kwargs,batch_sizes",
    [
        (dict(input_shape=(64, 96, 3)), (1, None)),  # padded windows and masks
        (dict(input_shape=(64, 64, 3), window_representation="avg_pool"), (1,)),
        (dict(input_shape=(32, 32, 3), window_token="zero"), (1,)),
    ],
)
@pytest.mark.slow
def test_rewrites_keep_other_configurations_exact(kwargs, batch_sizes, tmp_path):
    """to_onnx compares with Keras (1e-4) itself; trained-like weights (no
    zero biases for TensorFlow to fold away) exercise every pattern."""
    model = keras_sepvit.SepViTLite(classes=10, **kwargs)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(w.numpy() + rng.normal(scale=0.05, size=w.shape).astype("float32"))
    for batch_size in batch_sizes:
        path = export.to_onnx(model, str(tmp_path / "m.onnx"), batch_size=batch_size)
        assert os.path.exists(path)


@pytest.mark.slow
def test_optimize_reports_its_rewrites(tmp_path):
    import onnx

    model = keras_sepvit.SepViTLite(input_shape=(64, 64, 3), classes=10)
    rng = np.random.default_rng(0)
    for w in model.weights:  # trained-like: no zero bias for TensorFlow to fold away
        w.assign(w.numpy() + rng.normal(scale=0.05, size=w.shape).astype("float32"))
    raw = export.to_onnx(model, str(tmp_path / "raw.onnx"), batch_size=1, optimize=False)
    proto = onnx.load(raw)
    counts = onnx_graph.optimize(proto)
    assert set(counts) == set(onnx_graph.PASSES)
    # 39 LayerNorms less the 6 window tokens' norm1, constants of a batch-1 file
    assert counts["fuse_layer_norms"] == 33 and counts["gelu_for_fusion"] == 17, counts
    assert counts["split_heads"] > 0 and counts["dense_to_gemm"] > 0, counts
    # The 8 convolutions' bias Adds (after the NHWC transpose) ride in the Conv.
    assert counts["conv_bias_into_conv"] == 8, counts
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    assert len(convs) == 8 and all(len(node.input) == 3 for node in convs), convs
    onnx.checker.check_model(proto)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(quantization="int4"), "Received: quantization='int4'"),
        (dict(quantization="int8"), "Received: representative_data=None"),
        (dict(batch_size=0), "Received: batch_size=0"),
        (dict(batch_size=True), "Received: batch_size=True"),
        (dict(opset=True), "Received: opset=True"),
        (dict(opset=21), "Received: opset=21"),
        (dict(target="gpu"), r"one of \('cpu', 'mobile'\). Received: target='gpu'"),
        (dict(target=None), "Received: target=None"),
        (dict(target="mobile", batch_size=2), "Received: batch_size=2"),
        (dict(target="mobile", quantization="int8", representative_data=np.zeros(1)),
         "Received: quantization='int8'"),
    ],
)  # fmt: skip
def test_bad_onnx_arguments_fail_before_work(kwargs, match, tmp_path, monkeypatch):
    from keras_sepvit.export import onnx as onnx_export

    def work(*args, **kwargs):  # the conversion's first step
        raise AssertionError("the export started before the arguments were checked")

    monkeypatch.setattr(onnx_export, "_onnx_function", work)
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10)
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=match):
        export.to_onnx(model, str(path), **kwargs)
    assert not path.exists()
