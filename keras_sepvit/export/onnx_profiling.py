"""Per-kernel profile of an ONNX file under ONNX Runtime's CPU provider.

ONNX Runtime's own profiler (`SessionOptions.enable_profiling`) records every
kernel of every run with its input and output shapes. `profile` takes the
median per kernel over the timed runs and splits the time in two:

- matrix kernels (`MATRIX_OPS`: Gemm, MatMul, Conv and their fused and
  quantized forms), whose multiply-accumulates it counts from the shapes,
  giving the arithmetic rate they reach (GFLOP/s, 2 per MAC);
- everything else (normalisation, activations, softmax, data movement).

Why: where the matrix kernels run at the CPU's arithmetic peak for SepViT and
its peer alike, the ratio of the two models cannot go below
(SepViT's matrix time) / (the peer's whole time) by any rewrite of the rest of
the graph (`matrix_floor`). `benchmarks/onnx_latency.py` prints both per CPU.
"""

import collections
import json
import os
import tempfile

import numpy as np

# op type -> index of the weight input (convolutions) or None (matmuls: the
# left operand is input 0).
MATRIX_OPS = {
    "Gemm": None,
    "FusedGemm": None,
    "MatMul": None,
    "FusedMatMul": None,
    "QGemm": None,
    "MatMulInteger": None,
    "QLinearMatMul": None,
    "DynamicQuantizeMatMul": None,
    "MatMulIntegerToFloat": None,
    "Conv": 1,
    "FusedConv": 1,
    "NhwcFusedConv": 1,
    "QLinearConv": 3,
}


def kernel_macs(op, input_shapes, output_shapes):
    """Multiply-accumulates of one matrix kernel from its shapes; 0 for other ops.

    Matmuls: output elements x K, K being the left operand's dimension that
    is not the output's rows (transposed or not). Convolutions: output
    elements x the weight's (Cin / groups) x kh x kw. Counted as the kernel
    runs it: ORT's blocked (NCHWc) convolutions report, and compute, channels
    padded to a whole block (8 or 16), so a 3 -> 5 channel Conv counts 8.
    """
    if op not in MATRIX_OPS or not input_shapes or not output_shapes:
        return 0
    out = output_shapes[0]
    weight = MATRIX_OPS[op]
    if weight is not None:
        return int(np.prod(out)) * int(np.prod(input_shapes[weight][1:]))
    a = input_shapes[0]
    if len(a) == 1:
        k = a[0]
    else:
        rows = out[-2] if len(out) >= 2 else 1
        k = a[-1] if a[-2] == rows else a[-2]
    return int(np.prod(out)) * int(k)


def _shapes(entries):
    return [list(next(iter(e.values()))) for e in entries or []]


def profile(path, runs=10, num_threads=1, inputs=None, warmup=3):
    """Profiles `path` over `runs` runs after `warmup`; returns a dict:

    - `kernels`: [{"name", "op", "ms", "macs"}] (median ms per kernel);
    - `by_op`: {op: [count, ms]}, slowest first;
    - `ms`: the kernels' summed time; `matrix_ms`, `matrix_macs`,
      `other_ms` and `gflops` (the matrix kernels' rate).

    `inputs`: {name: array}, or one array for the file's first input;
    random floats in [0, 1) of the file's shapes (free dimensions 1) when None.
    """
    import onnxruntime as ort

    if runs < 1:
        raise ValueError(f"`runs` must be at least 1. Received: runs={runs}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "ort_profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if inputs is not None and not isinstance(inputs, dict):  # the file's one input
            inputs = {session.get_inputs()[0].name: inputs}
        if inputs is None:
            rng = np.random.default_rng(0)
            inputs = {
                i.name: rng.uniform(0, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(
                    "float32"
                )
                for i in session.get_inputs()
            }
        for _ in range(warmup + runs):
            session.run(None, inputs)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    times, meta = collections.defaultdict(list), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["name"]].append(event["dur"])
            meta[event["name"]] = event["args"]
    kernels = []
    for name, durations in times.items():
        args = meta[name]
        op = args["op_name"]
        macs = kernel_macs(
            op, _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
        )
        ms = float(np.median(durations[-runs:])) / 1000.0
        kernels.append({"name": name[: -len("_kernel_time")], "op": op, "ms": ms, "macs": macs})
    by_op = collections.defaultdict(lambda: [0, 0.0])
    for k in kernels:
        by_op[k["op"]][0] += 1
        by_op[k["op"]][1] += k["ms"]
    matrix = [k for k in kernels if k["op"] in MATRIX_OPS]
    matrix_ms = sum(k["ms"] for k in matrix)
    matrix_macs = sum(k["macs"] for k in matrix)
    total = sum(k["ms"] for k in kernels)
    return {
        "kernels": kernels,
        "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1][1])),
        "ms": total,
        "matrix_ms": matrix_ms,
        "matrix_macs": matrix_macs,
        "other_ms": total - matrix_ms,
        "gflops": 2 * matrix_macs / matrix_ms / 1e6 if matrix_ms else 0.0,
    }


def matrix_floor(model, peer):
    """The lowest model / peer time ratio reachable without changing the model's
    matrix kernels: its matrix time over the peer's whole time (two `profile`s)."""
    return model["matrix_ms"] / peer["ms"]
