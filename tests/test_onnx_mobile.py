"""Phones' accelerators: `to_onnx(..., target="mobile")` in one partition on
NNAPI and CoreML MLProgram (ONNX Runtime's own mobile checker), its `.ort`
copy, and the TFLite float16 file's GPU-delegate verdict (issue 19, part 2).
"""

import collections

import numpy as np
import pytest

import keras_sepvit
from keras_sepvit import export
from keras_sepvit.export import mobile_checks, onnx_mobile


def _perturbed(model):
    """Trained-like weights: no zero biases for TensorFlow to fold away."""
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(w.numpy() + rng.normal(scale=0.05, size=w.shape).astype("float32"))
    return model


def _ops(path):
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(path).graph.node)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """SepViT-Lite at 32x32: its 8x8 first stage pads to two 7x7 windows, so
    the graph holds every op kind (Pad too), exported for both targets."""
    folder = tmp_path_factory.mktemp("mobile")
    model = _perturbed(keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10))
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    cpu = export.to_onnx(model, str(folder / "cpu.onnx"), batch_size=1)
    mobile = export.to_onnx(model, str(folder / "mobile.onnx"), target="mobile", sample_inputs=x)
    return model, x, cpu, mobile


@pytest.mark.slow
def test_mobile_file_is_one_partition_on_nnapi_and_coreml_and_matches_keras(small_files):
    model, x, cpu, mobile = small_files
    for name, info in mobile_checks.onnx_partitions(mobile).items():
        assert info["partitions"] == 1 and not info["unsupported_ops"], (name, info)
        assert info["supported_nodes"] == info["nodes"], (name, info)
    got, expected = export.ONNXRunner(mobile)(x), model.predict(x, verbose=0)
    assert np.abs(got - expected).max() <= 1e-4  # the erf polynomial keeps the exact GELU
    ops = _ops(mobile)
    assert not {"LayerNormalization", "Erf", "Pad", "Reciprocal"} & set(ops), ops
    import onnx

    dims = onnx.load(mobile).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 32, 32, 3]  # static batch 1


@pytest.mark.slow
def test_default_target_keeps_the_cpu_graph(small_files):
    _, _, cpu, _ = small_files
    ops = _ops(cpu)
    # 39 LayerNorms less the 6 window tokens' norm1, constants of a batch-1 file
    assert ops["LayerNormalization"] == 33 and ops["Erf"] == 17 and ops["Gemm"] > 0, ops
    found = mobile_checks.onnx_partitions(cpu)  # what target="mobile" fixes
    assert found["NNAPI"]["partitions"] > 1
    assert {"Erf", "LayerNormalization"} <= set(found["NNAPI"]["unsupported_ops"])
    assert found["CoreML MLProgram"]["unsupported_ops"] == ["Pad"]


@pytest.mark.slow
def test_ort_file_loads_and_matches_the_onnx_file(small_files, tmp_path):
    _, x, _, mobile = small_files
    ort_path = export.to_ort(mobile, str(tmp_path / "mobile.ort"), sample_inputs=x)
    assert ort_path.endswith("mobile.ort") and open(ort_path, "rb").read(8)[4:8] == b"ORTM"
    got, expected = export.ONNXRunner(ort_path)(x), export.ONNXRunner(mobile)(x)
    assert np.abs(got - expected).max() <= 1e-5
    with pytest.raises(ValueError, match="Received: 'missing.onnx'"):
        export.to_ort("missing.onnx")


@pytest.mark.slow
def test_tflite_float16_file_is_gpu_delegate_compatible(tmp_path):
    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=10)
    path = export.to_tflite(model, str(tmp_path / "m.tflite"), quantization="float16")
    assert mobile_checks.tflite_gpu(path) == {"compatible": True, "problems": []}
    assert mobile_checks.verdict(path) == "GPU delegate: compatible"


@pytest.mark.slow
def test_lite_224_mobile_file_agrees_with_keras(tmp_path):
    """The bar at the size phones run: one partition each, top-1 agreement >= 99%."""
    model = _perturbed(keras_sepvit.SepViTLite(classes=1000))
    path = export.to_onnx(model, str(tmp_path / "lite.onnx"), target="mobile")
    found = mobile_checks.onnx_partitions(path)
    assert [info["partitions"] for info in found.values()] == [1, 1], found
    x = np.random.default_rng(2).uniform(0, 255, (16, 224, 224, 3)).astype("float32")
    got, expected = export.ONNXRunner(path)(x), model.predict(x, verbose=0)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.99
    assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()


def _graph(node, inputs, output_shape, initializers=(), opset=17):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, output_shape)],
        [onnx.numpy_helper.from_array(v, n) for n, v in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("opset", [17, 18])
def test_for_mobile_rewrites_each_op_exactly(opset, tmp_path):
    """Each rule against ONNX Runtime's own kernel, on a one-node graph."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (1, 5, 6, 8)).astype("float32")
    x[0, 0, 0, :3] = [0.0, 1e-6, -1e-6]  # erf near 0, where sign(z) is a clip
    gamma, beta = rng.normal(size=8).astype("float32"), rng.normal(size=8).astype("float32")
    cases = {
        "LayerNormalization": _graph(
            helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-6),
            [("x", x.shape)], x.shape, [("g", gamma), ("b", beta)], opset,
        ),
        "Erf": _graph(helper.make_node("Erf", ["x"], ["y"]), [("x", x.shape)], x.shape, (), opset),
        "Pad": _graph(
            helper.make_node("Pad", ["x", "p", "v"], ["y"]), [("x", x.shape)], (1, 7, 9, 8),
            [("p", np.array([0, 0, 3, 0, 0, 2, 0, 0], "int64")), ("v", np.float32(0.5))], opset,
        ),
        "Reciprocal": _graph(
            helper.make_node("Reciprocal", ["x"], ["y"]), [("x", x.shape)], x.shape, (), opset
        ),
    }  # fmt: skip
    for op, model in cases.items():
        feeds = {"x": np.abs(x) + 0.5 if op == "Reciprocal" else x}
        expected = _run(model, feeds)
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        counts = onnx_mobile.for_mobile(rewritten)
        assert counts[op] == 1, counts
        ops = {node.op_type for node in rewritten.graph.node}
        assert op not in ops and ops <= mobile_checks.supported_onnx_ops("NNAPI")
        assert ops <= mobile_checks.supported_onnx_ops("CoreML MLProgram"), ops
        got = _run(rewritten, feeds)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max()), op
        path = tmp_path / f"{op}.onnx"
        onnx.save(rewritten, path)
        found = mobile_checks.onnx_partitions(path)
        assert [info["partitions"] for info in found.values()] == [1, 1], (op, found)
