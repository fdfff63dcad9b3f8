"""keras_sepvit.export.profiling and its command line, benchmarks/tflite_profile.py:
the per-op profile and the XNNPACK delegation count (structure only: no timed
assertions)."""

import collections

import numpy as np
import pytest

from keras_sepvit.export import profiling


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("benchmarks", "tflite_profile")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    import keras_sepvit
    from keras_sepvit.export import to_tflite

    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    return to_tflite(model, str(tmp_path_factory.mktemp("profile") / "lite.tflite"))


def _check_structure(result):
    ops = result["ops"]
    assert [r["index"] for r in ops] == list(range(len(ops)))
    times = np.array([r["ms"] for r in ops])
    assert np.isfinite(times).all() and (times > 0).all(), [r for r in ops if r["error"]]
    assert np.isfinite(result["model_ms"]) and result["model_ms"] > 0
    assert 0 < result["overhead_ms"] < result["model_ms"]
    assert result["clock"] == "cpu"  # the default for 1 thread
    taken, total, partitions = result["delegation"]
    assert total == len(ops)
    assert taken == sum(r["delegated"] for r in ops)
    assert 0 < taken <= total and 1 <= partitions <= taken


@pytest.mark.slow
def test_quick_mode_profiles_float32_and_dynamic(tool, capsys):
    results = tool.main(["--quick"])
    assert set(results) == {"float32", "dynamic"}
    for result in results.values():
        _check_structure(result)
    out = capsys.readouterr().out
    assert out.count("| op type | count | ms | % | delegated |") == 2
    assert out.count("XNNPACK delegation: ") == 2
    # The dynamic-range file's matrix products take int8 weights.
    fc = [r for r in results["dynamic"]["ops"] if r["type"] == "FULLY_CONNECTED"]
    assert fc and all(r["inputs"][:2] == ["FLOAT32", "INT8"] for r in fc)


def test_every_op_of_the_file_is_profiled_and_delegation_matches_the_runtime(
    tool, tiny_file, capsys
):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    result = tool.main([tiny_file, "--runs", "2", "--top", "3"])
    _check_structure(result)
    plain = Interpreter(
        model_path=tiny_file,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    in_file = collections.Counter(op["op_name"] for op in plain._get_ops_details())
    assert collections.Counter(r["type"] for r in result["ops"]) == in_file
    assert len(result["ops"]) == plain._interpreter.NumNodes()

    # The partitions are the DELEGATE nodes the default interpreter adds.
    delegated = Interpreter(model_path=tiny_file, num_threads=1)
    delegated.allocate_tensors()
    names = [op["op_name"] for op in delegated._get_ops_details()]
    assert profiling.xnnpack_delegation(tiny_file) == result["delegation"]
    assert result["delegation"][2] == names.count("DELEGATE")
    # Each op alone is taken or left as in the whole file (true of this model,
    # and a check of the walk from each partition's outputs to its inputs).
    assert all(r["alone_delegated"] == r["delegated"] for r in result["ops"])

    out = capsys.readouterr().out
    assert "Slowest 3 ops:" in out and "Whole model: " in out
    assert "| op | type | input dtypes | output shape | ms | delegated |" in out


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
            "INFO: Replacing 649 out of 1233 node(s) with delegate (TfLiteXNNPackDelegate) "
            "node, yielding 243 partitions for subgraph 0 (main).\n",
            (649, 1233, 243),
        ),
        (
            "INFO: Replacing 33 node(s) with delegate (TfLiteXNNPackDelegate) node, "
            "yielding 3 partitions.",
            (33, None, 3),
        ),
        (
            "INFO: Replacing 5 out of 9 node(s) with delegate (TfLiteGpuDelegateV2) node, "
            "yielding 2 partitions for the whole graph.",
            None,
        ),
        ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", None),
    ],
)
def test_delegation_log_parsing(text, expected):
    assert profiling.parse_delegation_log(text) == expected


def test_cpu_clock_needs_one_thread(tiny_file):
    with pytest.raises(ValueError, match="clock='cpu', num_threads=2"):
        profiling.profile(tiny_file, runs=1, num_threads=2, clock="cpu")
