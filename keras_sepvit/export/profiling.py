"""Per-op profile of a .tflite file under LiteRT's XNNPACK delegate.

`profile(path)` measures, and `report(result)` writes as Markdown, where the
time goes (per op type and the slowest ops) and what XNNPACK did not take,
so that the next regression is visible (`benchmarks/tflite_profile.py` is
the command line, `xnnpack_delegation` the count alone). LiteRT's Python API has
no per-op profiler, so each op of the main subgraph is cut into a one-op model
(the same tensors, quantization parameters and constant buffers), fed the
values its inputs had in a full run of the file on a sample input (random
0..255 images by default), and timed alone in `Interpreter(num_threads=...)`
with the default XNNPACK delegate: median of `runs` invokes after warm-up.
The fixed cost of one `invoke()` from Python (a one-element op, timed the same
way) is subtracted from each op, and the sum is printed beside the whole file's
median time, which it should come close to.

Delegation is read from the runtime rather than from its log: this build of
LiteRT never prints TFLite's "Replacing N out of M node(s) with delegate ..."
line (it is a debug-build log off Android). After `allocate_tensors()` the
interpreter holds one DELEGATE node per XNNPACK partition; the original ops
inside a partition are those on the paths from the partition's outputs back to
its inputs. "Partitions" here counts XNNPACK partitions only; TFLite's log line
also counts the runs of builtin-kernel ops between them.

Only the main subgraph is profiled; an op that fails to run alone (e.g.
control flow that calls other subgraphs) gets no time and is listed as such.
Timings on a shared machine move with its load: the whole file is timed
before and after the ops, and a gap between the two shows it.

`machine_description()` is the line every benchmark's header carries: the
CPU model and its vector extensions read from the machine, the cores, the
date and the package versions (the same file runs 20-35% slower on one CPU
than on another, so a figure without its CPU says little).
"""

import contextlib
import copy
import datetime
import functools
import os
import platform
import re
import statistics
import time

import numpy as np

from keras_sepvit.tf_logging import stderr_filtered

_LOG_LINE = re.compile(
    r"Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \(([^)]*)\) node, "
    r"yielding (\d+) partitions"
)


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _interpreter(num_threads=1, delegates=True, **kwargs):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(num_threads=num_threads, **kwargs)


def read_model(path):
    """The file as a schema `ModelT` (buffers given by file offset are read in)."""
    schema = _schema()
    with open(os.fspath(path), "rb") as f:
        raw = f.read()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw, 0))
    for buffer in model.buffers or []:
        if buffer.offset > 1:  # weights stored after the flatbuffer (models > 2 GB)
            buffer.data = np.frombuffer(raw, np.uint8, buffer.size, buffer.offset)
            buffer.offset = buffer.size = 0
    return model


@functools.cache
def _names(enum):
    """{value: name} of a schema enum, e.g. 'BuiltinOperator'."""
    members = vars(getattr(_schema(), enum))
    return {v: k for k, v in members.items() if not k.startswith("_")}


def op_type(model, op):
    """The op's builtin name (e.g. 'BATCH_MATMUL'), or the custom code of a custom op."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == _schema().BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _names("BuiltinOperator").get(builtin, str(builtin))


class _AlignedBufferT:
    """Packs a buffer's data 16-byte aligned, as the converter writes it."""

    def __init__(self, data):
        self.data = data

    def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
        schema = _schema()
        data = None
        if self.data is not None and len(self.data):
            raw = np.ascontiguousarray(self.data, np.uint8).tobytes()
            builder.StartVector(1, len(raw), 16)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def _pack(model):
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def one_op_model(model, index, shapes=None):
    """The op `index` of the main subgraph alone, as .tflite bytes.

    Args:
        model: the file's `ModelT` (`read_model`).
        index: op index in subgraph 0.
        shapes: optional {tensor index: shape} of the shapes the tensors had at
            run time (static in the one-op model; a dynamic batch becomes 1).

    Returns:
        `(blob, inputs)`: the model, and the original tensor indices of its
        inputs in order (its outputs are the op's outputs).
    """
    schema = _schema()
    graph = model.subgraphs[0]
    op = graph.operators[index]
    new = {}  # original tensor index -> new index
    tensors, buffers, inputs = [], [_AlignedBufferT(None)], []

    def add(t):
        if t < 0:
            return t
        if t not in new:
            tensor = copy.copy(graph.tensors[t])
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if data is not None and len(data):
                buffers.append(_AlignedBufferT(data))
                tensor.buffer = len(buffers) - 1
            else:
                tensor.buffer = 0
                if shapes is not None and t in shapes:
                    tensor.shape = list(shapes[t])
                    tensor.shapeSignature = None
            new[t] = len(tensors)
            tensors.append(tensor)
        return new[t]

    one = copy.copy(op)
    one.opcodeIndex = 0
    one.inputs = [add(t) for t in op.inputs]
    for t in op.inputs:
        if t >= 0 and tensors[new[t]].buffer == 0 and t not in inputs:
            inputs.append(t)
    one.outputs = [add(t) for t in op.outputs]
    if op.intermediates is not None:
        one.intermediates = [add(t) for t in op.intermediates]
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = tensors, [one]
    sub.inputs = [new[t] for t in inputs]
    sub.outputs = [new[t] for t in op.outputs if t >= 0]
    sub.name = f"op{index}"
    out = schema.ModelT()
    out.version = model.version
    out.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
    out.subgraphs = [sub]
    out.buffers = buffers
    out.description = f"op {index} of a profiled model"
    return _pack(out), inputs


CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}


def _median_invoke_ms(interpreter, runs, clock, warmup=3):
    now = CLOCKS[clock]
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = now()
        interpreter.invoke()
        times.append(now() - start)
    return statistics.median(times) / 1e6


def sample_input(detail, seed=0):
    """Random image-range values (0..255, quantized for integer inputs) for one input."""
    rng = np.random.default_rng(seed)
    shape, dtype = detail["shape"], np.dtype(detail["dtype"])
    x = rng.uniform(0, 255, shape)
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    if scale:
        x = np.round(x / scale + zero)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    return np.clip(x, info.min, info.max).astype(dtype) if info else x.astype(dtype)


def capture_tensors(path, inputs=None):
    """Every tensor of subgraph 0 after one run on `inputs` (list, one array per
    input; defaults to `sample_input`), builtin kernels, as {index: array}."""
    count = len(read_model(path).subgraphs[0].tensors)
    interpreter = _interpreter(
        delegates=False, model_path=os.fspath(path), experimental_preserve_all_tensors=True
    )
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    if inputs is None:
        inputs = [sample_input(d, i) for i, d in enumerate(details)]
    for detail, x in zip(details, inputs, strict=True):
        interpreter.set_tensor(detail["index"], np.asarray(x, detail["dtype"]))
    interpreter.invoke()
    values = {}
    for t in range(count):  # not the kernels' scratch tensors after them: reading one crashes
        with contextlib.suppress(ValueError):
            value = interpreter.get_tensor(t)
            if value is not None:
                values[t] = np.array(value)
    return values


def parse_delegation_log(text):
    """(taken, total, partitions) from TFLite's delegation log line, or None.

    Reads "Replacing N out of M node(s) with delegate (TfLiteXNNPackDelegate)
    node, yielding K partitions ..." (debug and Android builds print it; older
    ones omit "out of M", given as None). K counts the builtin-kernel runs too.
    """
    for match in _LOG_LINE.finditer(text):
        if "xnnpack" in match.group(3).lower():
            total = int(match.group(2)) if match.group(2) else None
            return int(match.group(1)), total, int(match.group(4))
    return None


def _delegated_ops(path, num_threads=1, blob=None):
    """(set of op indices XNNPACK took, op count, XNNPACK partitions, log line or None)."""
    source = {"model_content": blob} if blob is not None else {"model_path": os.fspath(path)}
    captured = []

    def keep(text):  # the runtime's messages are written back as they would have been
        captured.append(text)
        return text.splitlines(keepends=True)

    with stderr_filtered(keep):  # fd 2, where the C++ runtime logs
        interpreter = _interpreter(num_threads, **source)
        total = interpreter._interpreter.NumNodes()
        interpreter.allocate_tensors()  # default delegates are applied lazily, here
        nodes = interpreter._interpreter.NumNodes()
    logged = parse_delegation_log("".join(captured))
    producer, op_inputs = {}, []
    for i in range(total):
        detail = interpreter._get_op_details(i)
        op_inputs.append([t for t in detail["inputs"] if t >= 0])
        for t in detail["outputs"]:
            producer[t] = i
    taken = set()
    for node in range(total, nodes):  # one DELEGATE node per partition
        detail = interpreter._get_op_details(node)
        stop = set(detail["inputs"])
        stack = [t for t in detail["outputs"] if t not in stop]
        while stack:
            i = producer.get(stack.pop())
            if i is None or i in taken:
                continue
            taken.add(i)
            stack.extend(t for t in op_inputs[i] if t not in stop)
    return taken, total, nodes - total, logged


def xnnpack_delegation(path, num_threads=1):
    """(nodes taken, total nodes, XNNPACK partitions) of the file's main subgraph."""
    taken, total, partitions, _ = _delegated_ops(path, num_threads)
    return len(taken), total, partitions


def invoke_overhead_ms(runs=200, num_threads=1, clock="wall"):
    """Median time of `invoke()` on a one-element ADD: the fixed cost in each op's time."""
    schema = _schema()
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    tensors = []
    for name in ("a", "b", "sum"):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.buffer, tensor.name = [1], 0, 0, name
        tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    sub = schema.SubGraphT()
    sub.tensors, sub.operators, sub.inputs, sub.outputs = tensors, [op], [0, 1], [2]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
    model.buffers = [_AlignedBufferT(None)]
    interpreter = _interpreter(num_threads, model_content=_pack(model))
    interpreter.allocate_tensors()
    return _median_invoke_ms(interpreter, runs, clock, warmup=20)


def _whole_model_ms(path, runs, num_threads, inputs, clock):
    interpreter = _interpreter(num_threads, model_path=path)
    interpreter.allocate_tensors()
    for i, detail in enumerate(interpreter.get_input_details()):
        x = inputs[i] if inputs is not None else sample_input(detail, i)
        interpreter.set_tensor(detail["index"], np.asarray(x, detail["dtype"]))
    return _median_invoke_ms(interpreter, runs, clock)


def profile(path, runs=30, num_threads=1, inputs=None, clock=None):
    """Times every op of a .tflite file alone under XNNPACK; see the module docstring.

    Args:
        path: the .tflite file.
        runs: timed invokes per op and for the whole file (median).
        num_threads: interpreter threads.
        inputs: one array per model input for the capture run; defaults to
            `sample_input`.
        clock: "cpu" (the calling thread's CPU time: what the invoke computed,
            whatever else runs on the core; 1 thread only) or "wall". Defaults
            to "cpu" for 1 thread, else "wall".

    Returns:
        A dict: "path", "runs", "threads", "clock", "model_ms" (whole file, median),
        "overhead_ms" (one invoke's fixed cost, subtracted from each op),
        "ops_ms" (sum of the ops' net times), "delegation" ((taken, total,
        partitions)), "logged" (the runtime's log line numbers when it printed
        one, else None), "model_ms_before_after" (the whole file timed before
        and after the ops: a gap between them is load from other processes;
        "model_ms" is the lower) and "ops": one dict per op in file order with
        "index", "type", "inputs" (input dtype names), "output" (first output
        shape), "ms" (median of the one-op model, invoke cost included; NaN
        when it cannot run alone), "net_ms" (ms less the invoke cost),
        "delegated" (XNNPACK took it in the whole file), "alone_delegated"
        (XNNPACK took it in its one-op model) and "error".
    """
    path = os.fspath(path)
    if clock is None:
        clock = "cpu" if num_threads == 1 else "wall"
    if clock not in CLOCKS or (clock == "cpu" and num_threads != 1):
        raise ValueError(
            'clock must be "wall", or "cpu" with num_threads=1 (the other threads\' time '
            f"is not the calling thread's). Received: clock={clock!r}, num_threads={num_threads}"
        )
    model_ms = [_whole_model_ms(path, runs, num_threads, inputs, clock)]
    model = read_model(path)
    graph = model.subgraphs[0]
    values = capture_tensors(path, inputs)
    shapes = {t: v.shape for t, v in values.items()}
    taken, total, partitions, logged = _delegated_ops(path, num_threads)
    if total != len(graph.operators):
        raise RuntimeError(
            f"{path}: the interpreter has {total} nodes but subgraph 0 has "
            f"{len(graph.operators)} ops; the file cannot be profiled op by op"
        )
    dtypes = _names("TensorType")
    overhead = invoke_overhead_ms(num_threads=num_threads, clock=clock)
    ops = []
    for index, op in enumerate(graph.operators):
        row = {
            "index": index,
            "type": op_type(model, op),
            "inputs": [dtypes.get(graph.tensors[t].type, "?") for t in op.inputs if t >= 0],
            "output": tuple(shapes.get(op.outputs[0], graph.tensors[op.outputs[0]].shape)),
            "delegated": index in taken,
            "alone_delegated": None,
            "ms": float("nan"),
            "error": None,
        }
        try:
            blob, op_inputs = one_op_model(model, index, shapes)
            interpreter = _interpreter(num_threads, model_content=blob)
            interpreter.allocate_tensors()
            row["alone_delegated"] = interpreter._interpreter.NumNodes() > 1
            for detail, t in zip(interpreter.get_input_details(), op_inputs, strict=True):
                value = values.get(t)
                if value is None:
                    value = sample_input(detail, index)
                interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
            row["ms"] = _median_invoke_ms(interpreter, runs, clock)
        except (RuntimeError, ValueError) as err:
            row["error"] = f"{type(err).__name__}: {err}"
        row["net_ms"] = row["ms"] - overhead
        ops.append(row)
    model_ms.append(_whole_model_ms(path, runs, num_threads, inputs, clock))
    return {
        "path": path,
        "runs": runs,
        "threads": num_threads,
        "clock": clock,
        "model_ms": min(model_ms),
        "model_ms_before_after": tuple(model_ms),
        "overhead_ms": overhead,
        "ops_ms": float(sum(r["net_ms"] for r in ops if np.isfinite(r["ms"]))),
        "delegation": (len(taken), total, partitions),
        "logged": logged,
        "ops": ops,
    }


def report(result, top=15):
    """The profile as Markdown: delegation, totals, per-op-type table, slowest ops."""
    ops = result["ops"]
    taken, total, partitions = result["delegation"]
    timed = [r for r in ops if np.isfinite(r["ms"])]
    net = {r["index"]: max(r["net_ms"], 0.0) for r in timed}
    all_net = sum(net.values()) or 1.0
    outside = {}
    for r in ops:
        if not r["delegated"]:
            outside[r["type"]] = outside.get(r["type"], 0) + 1
    lines = [
        f"## {os.path.basename(result['path'])}: {result['threads']} thread(s), "
        f"median of {result['runs']} ({result['clock']} time)",
        "",
        machine_description(("ai-edge-litert",)),
        "",
        f"XNNPACK delegation: {taken} / {total} nodes taken, {partitions} partitions",
    ]
    if outside:
        listed = ", ".join(f"{k} {v}" for k, v in sorted(outside.items(), key=lambda kv: -kv[1]))
        lines.append(f"Outside XNNPACK ({total - taken}): {listed}")
    if result["logged"] is not None:
        lines.append(f"Runtime log: {result['logged'][0]} / {result['logged'][1]} nodes, "
                     f"{result['logged'][2]} partitions (builtin runs included)")  # fmt: skip
    before, after = result["model_ms_before_after"]
    lines.append(
        f"Whole model: {result['model_ms']:.3f} ms (timed before the ops {before:.3f}, "
        f"after {after:.3f}); sum of {len(timed)} one-op models: "
        f"{result['ops_ms']:.3f} ms (each less {1000 * result['overhead_ms']:.1f} us of "
        f"invoke cost), {result['ops_ms'] / result['model_ms']:.2f}x the whole"
    )
    failed = [r for r in ops if not np.isfinite(r["ms"])]
    if failed:
        lines.append(f"Not timed alone ({len(failed)}): " + ", ".join(
            f"{r['index']} {r['type']}" for r in failed[:10]))  # fmt: skip
    moved = [r for r in timed if r["alone_delegated"] != r["delegated"]]
    if moved:
        lines.append(f"* {len(moved)} op(s) delegated differently alone than in the model: "
                     "their time is not the model's kernel")  # fmt: skip
    lines += ["", "| op type | count | ms | % | delegated |", "|---|---|---|---|---|"]
    by_type = {}
    for r in ops:
        entry = by_type.setdefault(r["type"], [0, 0.0, 0])
        entry[0] += 1
        entry[1] += net.get(r["index"], 0.0)
        entry[2] += r["delegated"]
    for name, (count, ms, delegated) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {name} | {count} | {ms:.3f} | {100 * ms / all_net:.1f} | "
                     f"{delegated}/{count} |")  # fmt: skip
    lines += ["", f"Slowest {min(top, len(timed))} ops:", ""]
    lines += ["| op | type | input dtypes | output shape | ms | delegated |"]
    lines.append("|---|---|---|---|---|---|")
    for r in sorted(timed, key=lambda r: -net[r["index"]])[:top]:
        mark = "*" if r["alone_delegated"] != r["delegated"] else ""
        lines.append(
            f"| {r['index']} | {r['type']} | {','.join(r['inputs'])} | "
            f"{'x'.join(map(str, r['output']))} | {net[r['index']]:.3f} | "
            f"{'yes' if r['delegated'] else 'no'}{mark} |"
        )
    return "\n".join(lines)


# The vector extensions that decide how fast int8 and float kernels run:
# x86 /proc/cpuinfo "flags", ARM "Features" (dot product, int8 matmul, SVE).
VECTOR_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_int8", "amx_bf16", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme",
)  # fmt: skip


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """'<CPU model> (<arch>; <vector extensions>)', read from the machine.

    The model is /proc/cpuinfo's "model name" (x86) or "Hardware" / "CPU
    part" (ARM), the extensions those of `VECTOR_FLAGS` in its "flags" /
    "Features" line. Without /proc/cpuinfo (macOS, Windows) the model is
    `platform.processor()` and the extensions are "not read".
    """
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        return (
            f"{platform.processor() or 'unknown CPU'} ({platform.machine()}; extensions not read)"
        )
    model = next(
        (fields[k] for k in ("model name", "hardware", "cpu model", "processor") if fields.get(k)),
        "unknown CPU",
    )
    if "cpu part" in fields and "model name" not in fields:
        model = f"{model}, implementer {fields.get('cpu implementer')} part {fields['cpu part']}"
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    found = [f for f in VECTOR_FLAGS if f in flags]
    return f"{model} ({platform.machine()}; {' '.join(found) or 'no listed vector extension'})"


def machine_description(packages=()):
    """One line for a benchmark header: CPU, extensions, cores, date, versions.

    Args:
        packages: distribution names whose installed versions are listed
            (those not installed are left out); Python's is always given.
    """
    from importlib import metadata

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    from keras_sepvit.export import amx

    # A run that denied itself AMX times the CPU as one without it would run.
    denied = "; AMX denied to this process (--without-amx)" if amx.amx_denied() else ""
    return (
        f"CPU: {cpu_description()}{denied}, {usable} of {os.cpu_count()} cores usable; "
        f"{datetime.date.today().isoformat()}; {', '.join(versions)}"
    )
