"""The ONNX graph for phones' accelerators (`to_onnx(..., target="mobile")`)
and its ONNX Runtime Mobile (`.ort`) copy (`to_ort`).

ONNX Runtime Mobile hands a graph to NNAPI (Android) or CoreML (iOS,
MLProgram) in partitions: each run of supported ops is one partition, and
every op between them runs on the CPU with copies in and out. Measured with
ONNX Runtime's own checker (`python -m
onnxruntime.tools.check_onnx_model_mobile_usability FILE`, onnxruntime
1.32) on the CPU graph of SepViT-Lite (`keras_sepvit.export.onnx_graph`):
NNAPI 47 partitions (no `Erf`, no `LayerNormalization`), CoreML MLProgram 2
(no `Pad`). `for_mobile` rewrites the three into ops both lists hold:

- `LayerNormalization` -> ReduceMean, Sub, Mul, ReduceMean, Add(eps), Sqrt,
  Div(1, .), Mul, Mul(gamma), Add(beta): the LayerNorm of the Keras graph,
  with Div in place of `Reciprocal` (not on NNAPI's list);
- `Erf` -> Abramowitz & Stegun 7.1.26, `erf(z) = sign(z) (1 - P(t)
  exp(-z^2))`, `t = 1 / (1 + p |z|)`, P a degree-5 polynomial: max error
  1.5e-7, so the exact GELU of the model is kept (the tanh form of GELU
  differs from it by up to 4.7e-4 per activation, errors that add up over 17
  blocks). `|z|` is `Max(z, -z)` and `sign(z)` is `Clip(1e4 z, -1, 1)`
  (CoreML has no Abs or Sign; 1e4 stays finite in float16, and below |z| =
  1e-4 the GELU error it makes is under 1e-8);
- `Pad` (constant mode, constant pads) -> `Concat` with constant blocks.

The result has a static batch of 1 and only ops that both lists hold, so the
checker finds one partition on each (`keras_sepvit.export.mobile_checks`);
`to_onnx` refuses to write a mobile file for which it does not.
"""

import contextlib
import logging
import os

import numpy as np

# Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) exp(-z^2), z >= 0.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SIGN_GAIN = 1e4  # sign(z) as Clip(gain * z, -1, 1): finite in float16 (< 65504)


class _Rewriter:
    """Replaces nodes of a graph by chains of new nodes, keeping their order."""

    def __init__(self, model):
        import onnx

        self.model = model
        self.opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        self._used = set(self.constants) | {n.name for n in model.graph.node}
        self._used.update(name for n in model.graph.node for name in n.output)
        self._counter = 0
        self._shapes = None
        self.nodes = []  # the chain being written for the current node

    def unique(self, hint):
        while True:
            self._counter += 1
            name = f"sepvit_mobile/{hint}_{self._counter}"
            if name not in self._used:
                self._used.add(name)
                return name

    def const(self, value, hint="c"):
        import onnx

        name = self.unique(hint)
        value = np.asarray(value, "float32" if np.asarray(value).dtype.kind == "f" else None)
        self.model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        self.constants[name] = value
        return name

    def op(self, op_type, inputs, output=None, **attrs):
        """Appends a node to the current chain; returns its output name."""
        import onnx

        output = output or self.unique(op_type.lower())
        self.nodes.append(
            onnx.helper.make_node(op_type, inputs, [output], name=self.unique(op_type), **attrs)
        )
        return output

    def shape(self, name):
        """The static shape of tensor `name` (ONNX shape inference), or None."""
        if self._shapes is None:
            import onnx

            graph = onnx.shape_inference.infer_shapes(self.model).graph
            self._shapes = {}
            for info in list(graph.value_info) + list(graph.input) + list(graph.output):
                dims = info.type.tensor_type.shape.dim
                if all(d.HasField("dim_value") for d in dims):
                    self._shapes[info.name] = tuple(d.dim_value for d in dims)
        return self._shapes.get(name)

    def reduce_mean(self, x, axes):
        if self.opset >= 18:  # axes became an input
            return self.op("ReduceMean", [x, self.const(np.array(axes, "int64"), "axes")])
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=1)

    def rewrite(self, rules):
        """Runs `rules` ({op_type: fn(node) -> bool}) over the graph; returns counts."""
        graph = self.model.graph
        new_nodes, counts = [], dict.fromkeys(rules, 0)
        for node in list(graph.node):
            rule = rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            self.nodes = []
            if rule is not None and rule(self, node):
                new_nodes.extend(self.nodes)
                counts[node.op_type] += 1
            else:
                new_nodes.append(node)
        read = {name for node in new_nodes for name in node.input}
        read.update(o.name for o in graph.output)
        kept = [i for i in graph.initializer if i.name in read]  # the rewritten nodes' constants
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.node[:]
        graph.node.extend(new_nodes)
        return counts


def _attr(node, name, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _layer_norm(r, node):
    """LayerNormalization -> the elementwise LayerNorm of the Keras graph."""
    x, gamma = node.input[0], node.input[1]
    beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if len(node.output) > 1 and any(node.output[1:]):
        return False  # mean / inv-std outputs are read: not written by onnx_graph
    axis = _attr(node, "axis", -1)
    if axis != -1:
        shape = r.shape(x)
        if shape is None:
            return False
        axis = axis % len(shape)
        axes = list(range(axis, len(shape)))
    else:
        axes = [-1]
    epsilon = _attr(node, "epsilon", 1e-5)
    centered = r.op("Sub", [x, r.reduce_mean(x, axes)])
    variance = r.reduce_mean(r.op("Mul", [centered, centered]), axes)
    std = r.op("Sqrt", [r.op("Add", [variance, r.const(np.float32(epsilon), "eps")])])
    inv = r.op("Div", [r.const(np.float32(1.0), "one"), std])
    normed = r.op("Mul", [centered, inv])
    out = node.output[0]
    scaled = r.op("Mul", [normed, gamma], None if beta else out)
    if beta:
        r.op("Add", [scaled, beta], out)
    return True


def _erf(r, node):
    """Erf -> Abramowitz & Stegun 7.1.26 with ops NNAPI and CoreML both run."""
    z = node.input[0]
    minus_z = r.op("Mul", [z, r.const(np.float32(-1.0), "minus_one")])
    magnitude = r.op("Max", [z, minus_z])
    one = r.const(np.float32(1.0), "one")
    t = r.op("Div", [one, r.op("Add", [r.op("Mul", [magnitude, r.const(np.float32(_ERF_P))]),
                                       one])])  # fmt: skip
    poly = r.op("Mul", [t, r.const(np.float32(_ERF_A[-1]), "a")])
    for a in reversed(_ERF_A[:-1]):  # Horner: t * (a1 + t * (a2 + ...))
        poly = r.op("Mul", [t, r.op("Add", [poly, r.const(np.float32(a), "a")])])
    gauss = r.op("Exp", [r.op("Mul", [z, minus_z])])
    tail = r.op("Sub", [one, r.op("Mul", [poly, gauss])])
    low, high = r.const(np.float32(-1.0), "lo"), r.const(np.float32(1.0), "hi")
    sign = r.op("Clip", [r.op("Mul", [z, r.const(np.float32(_SIGN_GAIN), "gain")]), low, high])
    r.op("Mul", [sign, tail], node.output[0])
    return True


def _pad(r, node):
    """Constant-mode Pad with constant, non-negative pads -> Concat of constant blocks."""
    if _attr(node, "mode", b"constant") not in (b"constant", "constant") or len(node.input) > 3:
        return False
    pads = r.constants.get(node.input[1]) if len(node.input) > 1 else None
    shape = r.shape(node.input[0])
    if pads is None or shape is None or (pads < 0).any():
        return False
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in r.constants:
            return False
        value = float(np.asarray(r.constants[node.input[2]]).ravel()[0])
    rank = len(shape)
    pads = [int(p) for p in pads]
    current, shape = node.input[0], list(shape)
    moves = [(a, pads[a], pads[a + rank]) for a in range(rank) if pads[a] or pads[a + rank]]
    for i, (axis, before, after) in enumerate(moves):
        parts = []
        for width in (before, after):
            block = list(shape)
            block[axis] = width
            parts.append(r.const(np.full(block, value, "float32"), "pad") if width else None)
        inputs = [p for p in (parts[0], current, parts[1]) if p]
        last = i == len(moves) - 1
        current = r.op("Concat", inputs, node.output[0] if last else None, axis=axis)
        shape[axis] += before + after
    if not moves:
        r.op("Identity", [current], node.output[0])
    return True


def _reciprocal(r, node):
    r.op("Div", [r.const(np.float32(1.0), "one"), node.input[0]], node.output[0])
    return True


RULES = {
    "LayerNormalization": _layer_norm,
    "Erf": _erf,
    "Pad": _pad,
    "Reciprocal": _reciprocal,
}


def for_mobile(model):
    """Rewrites an ONNX model in place so that NNAPI and CoreML MLProgram run
    every op (`RULES`; see the module docstring). Run it after
    `onnx_graph.optimize` (or instead of it): it undoes the one CPU fusion
    they cannot run (`LayerNormalization`).

    Returns:
        {op type: number of nodes rewritten}.
    """
    import onnx

    rewriter = _Rewriter(model)
    counts = rewriter.rewrite(RULES)
    onnx.checker.check_model(model)
    return counts


def to_ort(onnx_path, ort_path=None, sample_inputs=None, tolerance=1e-5):
    """An ONNX Runtime Mobile (`.ort`) copy of an ONNX file, checked against it.

    Written by ONNX Runtime's own converter
    (`onnxruntime.tools.convert_onnx_models_to_ort`) with the "Runtime"
    optimization style, the one ONNX Runtime recommends for NNAPI and CoreML:
    the file holds the basic-level graph (constant folding, no CPU-only fused
    kernels), so the accelerators still see the ops of the `.onnx`. The
    `.ort` is written under a temporary name, loaded in ONNX Runtime and
    compared with the `.onnx` before it replaces anything at `ort_path`.

    Args:
        onnx_path: an `.onnx` file (e.g. from `to_onnx(..., target="mobile")`).
        ort_path: the `.ort` path; defaults to `onnx_path` with `.ort`.
        sample_inputs: inputs to compare on; defaults to two random [0, 255]
            inputs at the file's (static) input shape.
        tolerance: max |output difference| allowed. Defaults to 1e-5.

    Returns:
        `ort_path`.

    Raises:
        ValueError: for a missing `onnx_path` or an `ort_path` not ending
            with `.ort`.
        RuntimeError: when the `.ort` differs from the `.onnx`.
    """
    import io
    import pathlib
    import shutil
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    from keras_sepvit.export import checks
    from keras_sepvit.export.runtimes import ONNXRunner

    onnx_path = os.fspath(onnx_path)
    if not os.path.isfile(onnx_path) or not onnx_path.endswith(".onnx"):
        raise ValueError(f"`onnx_path` must be an existing .onnx file. Received: {onnx_path!r}")
    ort_path = checks.check_output_path(ort_path or onnx_path[: -len(".onnx")] + ".ort", ".ort")
    source = ONNXRunner(onnx_path)
    if sample_inputs is None:
        shape = [d.dim_value or 1 for d in _input_dims(onnx_path)]
        rng = np.random.default_rng(0)
        sample_inputs = rng.uniform(0, 255, [2] + shape[1:]).astype("float32")
    x = np.asarray(sample_inputs, "float32")
    tmp = ort_path + ".unchecked.ort"
    try:
        with tempfile.TemporaryDirectory() as folder:
            copy = pathlib.Path(folder) / "model.onnx"
            shutil.copyfile(onnx_path, copy)
            with contextlib.redirect_stdout(io.StringIO()), _quiet("ort_format_model"):
                convert_onnx_models_to_ort(
                    copy,
                    output_dir=pathlib.Path(folder) / "out",
                    optimization_styles=[OptimizationStyle.Runtime],
                )
            shutil.move(str(pathlib.Path(folder) / "out" / "model.with_runtime_opt.ort"), tmp)
        got, expected = _outputs(ONNXRunner(tmp)(x)), _outputs(source(x))
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        if not diff <= tolerance:
            raise RuntimeError(
                f"The .ort file differs from {onnx_path} by {diff:.3g} (> {tolerance:g}) "
                "on the sample inputs; nothing was written"
            )
        os.replace(tmp, ort_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return ort_path


@contextlib.contextmanager
def _quiet(prefix):
    """Hides the INFO records of the loggers under `prefix` (the converter's notes)."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if n.startswith(prefix)] or [logging.getLogger(prefix + ".utils")]  # fmt: skip
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _input_dims(path):
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim


def _outputs(outputs):
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    return [np.asarray(outputs)]
