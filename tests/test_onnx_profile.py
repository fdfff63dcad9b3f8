"""ONNX Runtime per-kernel profile (`keras_sepvit.export.onnx_profiling`):
multiply-accumulates counted from the kernels' shapes, time split in matrix
and other kernels, the floor ratio of `benchmarks/onnx_latency.py`."""

import numpy as np
import pytest

from keras_sepvit.export import onnx_profiling


def _file(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(16, 3, 3, 3)).astype("float32"),  # Conv, 3 -> 16 channels
        "m": rng.normal(size=(8, 16)).astype("float32"),  # MatMul over W = 8
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # (1, 16, 8, 8)
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Softmax", ["r"], ["s"], axis=-1),
        helper.make_node("MatMul", ["s", "m"], ["y"]),  # (1, 16, 8, 16)
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 16])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_kernel_macs_from_shapes():
    # matmul: output elements x K, left operand plain or transposed
    assert (
        onnx_profiling.kernel_macs("MatMul", [[2, 4, 8], [8, 16]], [[2, 4, 16]]) == 2 * 4 * 16 * 8
    )
    assert onnx_profiling.kernel_macs("Gemm", [[8, 4], [8, 16]], [[4, 16]]) == 4 * 16 * 8
    assert onnx_profiling.kernel_macs("FusedMatMul", [[3, 5, 5], [3, 5, 7]], [[3, 5, 7]]) == 525
    # convolution: output elements x (Cin / groups) x kh x kw; grouped and quantized
    assert onnx_profiling.kernel_macs("Conv", [[1, 3, 8, 8], [5, 3, 3, 3]], [[1, 5, 8, 8]]) == (
        320 * 27
    )
    assert onnx_profiling.kernel_macs("Conv", [[1, 4, 8, 8], [4, 1, 3, 3]], [[1, 4, 8, 8]]) == (
        256 * 9
    )
    qconv = [[1, 3, 8, 8], [1], [1], [5, 3, 3, 3], [5], [5], [1], [1]]
    assert onnx_profiling.kernel_macs("QLinearConv", qconv, [[1, 5, 8, 8]]) == 320 * 27
    assert onnx_profiling.kernel_macs("Softmax", [[1, 5, 8, 8]], [[1, 5, 8, 8]]) == 0


def test_profile_splits_matrix_and_other_time(tmp_path):
    path = _file(str(tmp_path / "tiny.onnx"))
    result = onnx_profiling.profile(path, runs=3)
    ops = {k["op"] for k in result["kernels"]}
    assert "Softmax" in ops and ops & {"Conv", "FusedConv"} and ops & {"MatMul", "Gemm"}, ops
    # 1,024 x 27 MACs in the convolution (16 channels: a whole number of ORT's
    # NCHWc blocks, which pad channels), 16 x 8 x 16 x 8 in the matmul
    assert result["matrix_macs"] == 1024 * 27 + 16 * 8 * 16 * 8, result["kernels"]
    assert result["ms"] == pytest.approx(result["matrix_ms"] + result["other_ms"])
    assert result["matrix_ms"] > 0 and result["other_ms"] > 0 and result["gflops"] > 0
    assert sum(count for count, _ in result["by_op"].values()) == len(result["kernels"])
    # the floor: the matrix time over the peer's whole time
    assert onnx_profiling.matrix_floor(result, result) == pytest.approx(
        result["matrix_ms"] / result["ms"]
    )
    with pytest.raises(ValueError, match="runs=0"):
        onnx_profiling.profile(path, runs=0)
