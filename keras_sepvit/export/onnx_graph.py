"""Rewrites of the tf2onnx graph of a SepViT so that ONNX Runtime runs it fast.

tf2onnx writes the model op by op, as TensorFlow traced it. ONNX Runtime
then fuses what it recognises, and it recognises neither our LayerNorm (its
variance is taken with MUL, for int16x8 TFLite) nor, as tf2onnx writes it,
our exact GELU. Each pass below rewrites one such pattern into a form that
ONNX Runtime runs as one kernel, or removes data movement that the Keras
graph needs on every backend but a static ONNX graph does not. Every pass
computes the same function (to float rounding): `to_onnx` checks the result
against Keras, and the tests against the authors' reference logits.

Passes work on an `onnx.ModelProto` in place and use only the `onnx`
package.
"""

import numpy as np

_OPSET_LAYER_NORM = 17  # ONNX LayerNormalization


class _Graph:
    """Producer/consumer indexes and constants of an ONNX graph being rewritten."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.constants = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self._used = {i.name for i in self.graph.initializer}
        self._used.update(name for node in self.graph.node for name in node.output)
        self._used.update(node.name for node in self.graph.node)
        self._counter = 0
        self.reindex()

    def reindex(self):
        self.producer = {}
        self.consumers = {}
        for node in self.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in set(node.input):
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}

    def const(self, name):
        return self.constants.get(name)

    def scalar(self, name):
        """The value of a constant with one element, else None."""
        value = self.constants.get(name)
        if value is None or value.size != 1:
            return None
        return float(value.ravel()[0])

    def add_const(self, array, hint):
        from onnx import numpy_helper

        name = self.unique(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        self.constants[name] = np.asarray(array)
        return name

    def unique(self, hint):
        """A tensor/node name not used in the graph yet."""
        while True:
            self._counter += 1
            name = f"sepvit_onnx/{hint}_{self._counter}"
            if name not in self._used:
                self._used.add(name)
                return name

    def only_consumer(self, name):
        """The single node that reads `name` (and it is no graph output), else None."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    def other_input(self, node, name):
        """The input of a two-input node that is not `name`."""
        a, b = node.input
        return b if a == name else a

    def rename_uses(self, old, new):
        for node in self.consumers.get(old, []):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        for output in self.graph.output:
            if output.name == old:
                raise AssertionError("graph outputs are kept by the passes")

    def prune(self):
        """Drops nodes whose outputs nobody reads, unused constants; sorts the graph."""
        import onnx

        graph = self.graph
        nodes = list(graph.node)
        producer = {name: i for i, node in enumerate(nodes) for name in node.output}
        needed, stack, kept = set(), [o.name for o in graph.output], set()
        while stack:  # everything the outputs depend on
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            index = producer.get(name)
            if index is not None and index not in kept:
                kept.add(index)
                stack.extend(nodes[index].input)
        kept = [node for i, node in enumerate(nodes) if i in kept]
        ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
        ordered, pending = [], kept
        while pending:  # topological order (rewrites may append nodes at the end)
            rest = []
            for node in pending:
                if all(i in ready for i in node.input):
                    ordered.append(node)
                    ready.update(node.output)
                else:
                    rest.append(node)
            if len(rest) == len(pending):
                raise AssertionError(f"cycle or missing input at {rest[0].name}")
            pending = rest
        del graph.node[:]
        graph.node.extend(ordered)
        initializers = [i for i in graph.initializer if i.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        del graph.value_info[:]
        self.constants = {k: v for k, v in self.constants.items() if k in needed}
        onnx.checker.check_model(self.model)
        self.reindex()


def _node(op_type, inputs, outputs, name, **attrs):
    import onnx

    return onnx.helper.make_node(op_type, inputs, outputs, name=name, **attrs)


def _ranks(model):
    """Tensor name -> rank, from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    graph = inferred.graph
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def _last_axis_mean(g, node, ranks):
    """The input of `node` if it is a keepdims mean over the last axis, else None."""
    if node is not None and node.op_type == "GlobalAveragePool":
        # tf2onnx's pooling rewrite of a mean over the last axis of a 3-D tensor
        return node.input[0] if ranks.get(node.input[0]) == 3 else None
    if node is None or node.op_type != "ReduceMean":
        return None
    attrs = {a.name: a for a in node.attribute}
    if "keepdims" in attrs and attrs["keepdims"].i != 1:
        return None
    axes = list(attrs["axes"].ints) if "axes" in attrs else None
    if axes is None and len(node.input) > 1:
        value = g.const(node.input[1])
        axes = None if value is None else [int(a) for a in value.ravel()]
    rank = ranks.get(node.input[0])
    if axes is None or rank is None or len(axes) != 1 or axes[0] not in (-1, rank - 1):
        return None
    return node.input[0]


def fuse_layer_norms(model):
    """Our `LayerNorm` subgraphs -> ONNX `LayerNormalization` (opset >= 17).

    tf2onnx writes `keras_sepvit.layers.LayerNorm` as ReduceMean, Sub,
    Mul(d, d), ReduceMean, Add(eps), Sqrt, Reciprocal, Mul(gamma), Mul and
    Add(beta): ten elementwise kernels, which ONNX Runtime's LayerNorm fusion
    does not match (it looks for Pow and Div). Measured on SepViT-Lite (1
    thread, 224, onnxruntime 1.32): the 39 LayerNorms took about 2.6 ms as
    elementwise kernels and 0.85 ms as `LayerNormalization`; with
    `gelu_for_fusion` the file went from 15.1 to 12.5 ms. A missing
    gamma (scale=False) or beta (center=False, or folded away by TensorFlow
    when zero) becomes ones / zeros. Returns the number of nodes written.
    """
    g = _Graph(model)
    ranks = _ranks(model)
    count = 0
    for sub in list(g.graph.node):
        if sub.op_type != "Sub":
            continue
        x, mean_name = sub.input
        if _last_axis_mean(g, g.producer.get(mean_name), ranks) != x:
            continue
        centered = sub.output[0]
        users = g.consumers.get(centered, [])
        square = [n for n in users if n.op_type == "Mul" and list(n.input) == [centered] * 2]
        if len(users) != 2 or len(square) != 1:
            continue
        scale_mul = next(n for n in users if n is not square[0])
        variance = g.only_consumer(square[0].output[0])
        if _last_axis_mean(g, variance, ranks) != square[0].output[0]:
            continue
        add_eps = g.only_consumer(variance.output[0])
        if add_eps is None or add_eps.op_type != "Add":
            continue
        epsilon = g.scalar(g.other_input(add_eps, variance.output[0]))
        sqrt = g.only_consumer(add_eps.output[0])
        if epsilon is None or sqrt is None or sqrt.op_type != "Sqrt":
            continue
        reciprocal = g.only_consumer(sqrt.output[0])
        if reciprocal is None or reciprocal.op_type != "Reciprocal":
            continue
        inv = reciprocal.output[0]
        gamma_mul = g.only_consumer(inv)
        gamma = None
        if gamma_mul is not None and gamma_mul is not scale_mul and gamma_mul.op_type == "Mul":
            gamma = g.const(g.other_input(gamma_mul, inv))
            if gamma is None or gamma.ndim != 1:
                continue
            inv = gamma_mul.output[0]
        if scale_mul.op_type != "Mul" or g.other_input(scale_mul, centered) != inv:
            continue
        if g.only_consumer(inv) is not scale_mul:
            continue
        out = scale_mul.output[0]
        beta = None
        add_beta = g.only_consumer(out)
        if add_beta is not None and add_beta.op_type == "Add":
            beta = g.const(g.other_input(add_beta, out))
            if beta is not None and beta.ndim == 1 and (gamma is None or beta.shape == gamma.shape):
                out = add_beta.output[0]
            else:
                beta = None
        if gamma is None and beta is None:
            continue  # the width is not known here; leave it elementwise
        channels = (gamma if gamma is not None else beta).shape[0]
        gamma = np.ones(channels, "float32") if gamma is None else gamma.astype("float32")
        beta = np.zeros(channels, "float32") if beta is None else beta.astype("float32")
        name = g.unique("LayerNorm")
        layer_norm = _node(
            "LayerNormalization",
            [x, g.add_const(gamma, "gamma"), g.add_const(beta, "beta")],
            [out],
            name,
            axis=-1,
            epsilon=epsilon,
        )
        # The final node's output now comes from LayerNormalization; the old
        # nodes lose their only reader and are pruned.
        producer = g.producer[out]
        producer.output[0] = g.unique("dead")
        g.graph.node.append(layer_norm)
        g.producer[out] = layer_norm
        count += 1
    g.prune()
    return count


def gelu_for_fusion(model):
    """Exact GELU as the pattern ONNX Runtime's GeluFusion matches.

    `0.5 * x * (1 + erf(x * (1 / sqrt(2))))` comes out of tf2onnx with a Mul
    by 0.70710677; ONNX Runtime fuses the same graph into one `Gelu` kernel
    only when it divides by 1.4142135 (its `GeluFusion` pattern). The two
    differ by float rounding of the erf argument. Measured on SepViT-Lite:
    17 Gelu kernels, 0.93 ms, in place of 85 elementwise ones. Returns the
    number of rewritten nodes.
    """
    g = _Graph(model)
    count = 0
    for mul in list(g.graph.node):
        if mul.op_type != "Mul":
            continue
        erf = g.only_consumer(mul.output[0])
        if erf is None or erf.op_type != "Erf":
            continue
        constant = [i for i in mul.input if g.scalar(i) is not None]
        if len(constant) != 1 or abs(g.scalar(constant[0]) - 0.5**0.5) > 1e-6:
            continue
        x = g.other_input(mul, constant[0])
        mul.op_type = "Div"
        del mul.input[:]
        mul.input.extend([x, g.add_const(np.array(2.0**0.5, "float32"), "sqrt2")])
        count += 1
    g.prune()
    return count


def _shapes(model):
    """Tensor name -> static shape (tuple of ints, or None where unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    graph = inferred.graph
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in dims
            )
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def channel_affine_after_transpose(model):
    """Moves per-channel Mul/Add in front of an NHWC -> NCHW Transpose behind it.

    The model's input normalisation (`Rescaling`: x * scale + offset, 3
    channels) runs on the NHWC image, right before the stem convolution's
    transpose to NCHW. ONNX Runtime broadcasts a 3-element vector over the
    last axis slowly: the two ops took about 1 ms of SepViT-Lite's 13.5 ms (1
    thread, 224). Behind the transpose the constants are (C, 1, 1) planes,
    which run about 20x faster. Returns the number of moved ops.
    """
    g = _Graph(model)
    count = 0
    for transpose in list(g.graph.node):
        if transpose.op_type != "Transpose":
            continue
        perm = [a.ints for a in transpose.attribute if a.name == "perm"]
        if not perm or list(perm[0]) != [0, 3, 1, 2]:
            continue
        chain, name = [], transpose.input[0]
        while True:  # walk up a chain of Mul/Add by per-channel constants
            node = g.producer.get(name)
            if node is None or node.op_type not in ("Mul", "Add") or g.only_consumer(name) is None:
                break
            constant = [i for i in node.input if g.const(i) is not None]
            if len(constant) != 1 or g.const(constant[0]).ndim != 1:
                break
            chain.append((node, constant[0]))
            name = g.other_input(node, constant[0])
        if not chain:
            continue
        source, out = name, transpose.output[0]
        moved = g.unique("nchw")
        transpose.input[0] = source
        transpose.output[0] = moved
        for node, constant in reversed(chain):  # same order as before, behind the transpose
            value = g.const(constant).reshape(-1, 1, 1)
            del node.input[:]
            node.input.extend([moved, g.add_const(value, "channel_constant")])
            moved = g.unique("nchw") if node is not chain[0][0] else out
            node.output[0] = moved
            count += 1
    g.prune()
    return count


def conv_bias_into_conv(model):
    """`Conv -> Transpose(NCHW -> NHWC) -> Add(bias)` -> `Conv(bias) -> Transpose`.

    tf2onnx writes a Keras convolution's bias as an Add after the transpose
    back to NHWC: one more pass over the activations per convolution, which
    ONNX Runtime fuses into the convolution only where the Add is the
    transpose's single reader. SepViT-Lite's 8 convolutions (patch
    embeddings, position encodings) carry their bias in the Conv instead
    (ORT profiler, 1 thread, 224: 52 -> 44 Add kernels, 0.71 -> 0.52 ms).
    Returns the number of moved biases.
    """
    g = _Graph(model)
    count = 0
    for add in list(g.graph.node):
        constant = [i for i in add.input if g.const(i) is not None]
        if add.op_type != "Add" or len(constant) != 1 or g.const(constant[0]).ndim != 1:
            continue
        moved = g.other_input(add, constant[0])
        transpose = g.producer.get(moved)
        if (
            transpose is None
            or transpose.op_type != "Transpose"
            or _perm(transpose) != [0, 2, 3, 1]
        ):
            continue
        conv = g.producer.get(transpose.input[0])
        if conv is None or conv.op_type != "Conv" or add.output[0] in g.outputs:
            continue
        weight, bias = g.const(conv.input[1]), g.const(constant[0])
        old = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else 0.0
        if (
            g.only_consumer(transpose.input[0]) is not transpose
            or g.only_consumer(moved) is not add
        ):
            continue
        if weight is None or old is None or bias.shape != (weight.shape[0],):
            continue
        name = g.add_const((bias + old).astype(bias.dtype), "conv_bias")
        del conv.input[2:]
        conv.input.append(name)
        g.rename_uses(add.output[0], moved)
        count += 1
    g.prune()
    return count


def bias_before_reshape(model):
    """`MatMul -> Reshape -> Add(bias)` -> `MatMul -> Add(bias) -> Reshape`.

    tf2onnx writes a Keras Dense on a (B, ..., C) tensor as Reshape to 2-D,
    MatMul, Reshape back, then the bias Add. With the Add next to the 2-D
    MatMul, ONNX Runtime fuses the two into one Gemm (the bias rides in the
    GEMM's output pass instead of a second pass over the activations).
    Valid whenever the Reshape keeps the last axis, along which the bias
    broadcasts. In SepViT-Lite 50 bias Adds (a pass over the activations
    each) fold into Gemms. Returns the number of moved Adds.
    """
    g = _Graph(model)
    shapes = _shapes(model)
    count = 0
    for add in list(g.graph.node):
        if add.op_type != "Add":
            continue
        constant = [i for i in add.input if g.const(i) is not None]
        if len(constant) != 1 or g.const(constant[0]).ndim != 1:
            continue
        reshaped = g.other_input(add, constant[0])
        reshape = g.producer.get(reshaped)
        if reshape is None or reshape.op_type != "Reshape" or g.only_consumer(reshaped) is None:
            continue
        matmul = g.producer.get(reshape.input[0])
        if (
            matmul is None
            or matmul.op_type != "MatMul"
            or g.only_consumer(matmul.output[0]) is None
        ):
            continue
        before, after = shapes.get(reshape.input[0]), shapes.get(reshaped)
        channels = g.const(constant[0]).shape[0]
        if not before or not after or before[-1] != channels or after[-1] != channels:
            continue
        biased = g.unique("biased")
        add.input[:] = [matmul.output[0], constant[0]]
        out = add.output[0]
        add.output[0] = biased
        reshape.input[0] = biased
        reshape.output[0] = out
        count += 1
    g.prune()
    return count


def _perm(node):
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0]


def _slice_range(g, node, rank):
    """(axis, start, end) of a unit-step Slice that cuts one axis, else None."""
    values = [g.const(i) for i in node.input[1:]]
    if any(v is None for v in values):
        return None
    starts, ends = list(values[0].ravel()), list(values[1].ravel())
    axes = list(values[2].ravel()) if len(values) > 2 else list(range(len(starts)))
    steps = list(values[3].ravel()) if len(values) > 3 else [1] * len(starts)
    cut = None
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % rank
        if step != 1 or start < 0 or end < 0:
            return None
        if start == 0 and end >= 2**31 - 1:
            continue  # the whole axis
        if cut is not None:
            return None
        cut = (axis, int(start), int(end))
    return cut


def slices_of_concat(model):
    """A Slice that takes back one input of a Concat reads that input directly.

    `WindowTokens` concatenates the (constant) window tokens in front of
    each window's pixels; the block then slices them apart again to
    normalise the tokens on their own (norm1 per token) and concatenates
    once more. Reading the Concat's inputs directly drops two copies of the
    windows per block, and the tokens' LayerNorm then has a constant input,
    which ONNX Runtime folds when it loads the file. Returns the number of
    Slices removed.
    """
    g = _Graph(model)
    shapes = _shapes(model)
    count = 0
    for node in list(g.graph.node):
        if node.op_type != "Slice":
            continue
        concat = g.producer.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or not shapes.get(concat.output[0]):
            continue
        rank = len(shapes[concat.output[0]])
        cut = _slice_range(g, node, rank)
        axis = [a.i for a in concat.attribute if a.name == "axis"][0] % rank
        if cut is None or cut[0] != axis:
            continue
        offset = 0
        for name in concat.input:
            size = (shapes.get(name) or (None,) * rank)[axis]
            if size is None:
                break
            end = min(cut[2], shapes[concat.output[0]][axis])
            if (cut[1], end) == (offset, offset + size):
                g.rename_uses(node.output[0], name)
                count += 1
                break
            offset += size
    g.prune()
    return count


def transposes_of_unit_axes(model):
    """A Transpose that only moves axes of size 1 is a Reshape (no copy).

    With one attention head (SepViT-Lite's first stage) or batch 1, several
    head-split and window-order transposes move only size-1 axes. ONNX
    Runtime's Reshape aliases its input; its Transpose copies. Returns the
    number of Transposes replaced.
    """
    g = _Graph(model)
    shapes = _shapes(model)
    count = 0
    for node in list(g.graph.node):
        if node.op_type != "Transpose":
            continue
        shape = shapes.get(node.input[0])
        if not shape or None in shape:
            continue
        moved = [a for a in _perm(node) if shape[a] != 1]
        if moved != sorted(moved):
            continue
        out_shape = [shape[a] for a in _perm(node)]
        node.op_type = "Reshape"
        del node.attribute[:]
        node.input.append(g.add_const(np.array(out_shape, "int64"), "shape"))
        count += 1
    g.prune()
    return count


def _dense_source(g, name):
    """(2-D input, weight, bias or None, reshapes) of a MatMul(+Add) that
    feeds `name` through Reshapes only, else None."""
    reshapes = []
    node = g.producer.get(name)
    while node is not None and node.op_type == "Reshape" and g.only_consumer(node.output[0]):
        reshapes.append(node)
        node = g.producer.get(node.input[0])
    bias = None
    if node is not None and node.op_type == "Add" and g.only_consumer(node.output[0]):
        constant = [i for i in node.input if g.const(i) is not None]
        if len(constant) != 1:
            return None
        bias = g.const(constant[0])
        node = g.producer.get(g.other_input(node, constant[0]))
    if node is None or node.op_type != "MatMul" or g.only_consumer(node.output[0]) is None:
        return None
    weight = g.const(node.input[1])
    if weight is None or weight.ndim != 2 or (bias is not None and bias.shape != weight.shape[1:]):
        return None
    return node.input[0], weight, bias, reshapes


def split_heads(model):
    """One projection per q, k, v instead of slicing them out of a fused qkv.

    `SeparableSelfAttention` projects to q, k and v at once (`qkv`, and
    `pointwise_qk` for PWA), reshapes to heads, transposes to
    (N, 3h, T, d), slices q, k, v apart (three copies) and transposes k
    again. Splitting the weight matrix by columns gives the same numbers with
    one Gemm, Reshape and Transpose per part, and k comes out of its
    transpose already as (N, h, d, T). Measured on SepViT-Lite (1 thread,
    224), with `slices_of_concat` and `transposes_of_unit_axes`: Slice time
    0.68 -> 0.12 ms, the whole file 14.9 -> 13.8 ms (sums of per-kernel
    medians from ONNX Runtime's profiler). Returns the number of split
    projections.
    """
    g = _Graph(model)
    shapes = _shapes(model)
    count = 0
    for transpose in list(g.graph.node):
        if transpose.op_type != "Transpose" or _perm(transpose) != [0, 2, 1, 3]:
            continue
        heads_shape = shapes.get(transpose.input[0])  # (N, T, parts * h, d)
        if not heads_shape or None in heads_shape:
            continue
        source = _dense_source(g, transpose.input[0])
        slices = g.consumers.get(transpose.output[0], [])
        if source is None or not slices or transpose.output[0] in g.outputs:
            continue
        x, weight, bias, _ = source
        n, tokens, parts, depth = heads_shape
        rows = shapes.get(x)
        if not rows or rows[0] != n * tokens or weight.shape[1] != parts * depth:
            continue  # the reshapes must split the output columns only
        cuts = [_slice_range(g, s, 4) if s.op_type == "Slice" else None for s in slices]
        if any(c is None or c[0] != 1 for c in cuts):
            continue
        for node, (_, start, end) in zip(slices, cuts):
            end = min(end, heads_shape[2])
            columns = slice(start * depth, end * depth)
            out = g.unique("split")
            inputs = [x, g.add_const(np.ascontiguousarray(weight[:, columns]), "weight")]
            g.graph.node.append(_node("MatMul", inputs, [out], out + "/MatMul"))
            if bias is not None:
                biased = g.unique("split")
                constant = g.add_const(np.ascontiguousarray(bias[columns]), "bias")
                g.graph.node.append(_node("Add", [out, constant], [biased], biased + "/Add"))
                out = biased
            shape = np.array([n, tokens, end - start, depth], "int64")
            heads = g.unique("split")
            g.graph.node.append(
                _node("Reshape", [out, g.add_const(shape, "shape")], [heads], heads + "/Reshape")
            )
            perm, target = [0, 2, 1, 3], node.output[0]
            reader = g.only_consumer(node.output[0])
            if (
                reader is not None
                and reader.op_type == "Transpose"
                and _perm(reader) == [0, 1, 3, 2]
            ):
                perm, target = [0, 2, 3, 1], reader.output[0]  # k, as (N, h, d, T)
            moved = g.unique("split")
            g.graph.node.append(_node("Transpose", [heads], [moved], moved + "/T", perm=perm))
            g.rename_uses(target, moved)
        count += 1
        g.reindex()
    g.prune()
    return count


def dense_to_gemm(model):
    """`MatMul(x, W) -> Add(bias)` on 2-D x -> one ONNX `Gemm` node.

    ONNX Runtime fuses the pair itself in float; its quantizer does not: it
    quantizes a MatMul and leaves the bias Add as a float op behind a
    DequantizeLinear, but turns a Gemm into one QGemm with an int32 bias.
    Run before `quantize_static`. Returns the number of Gemm nodes written.
    """
    g = _Graph(model)
    shapes = _shapes(model)
    count = 0
    for matmul in list(g.graph.node):
        if matmul.op_type != "MatMul" or g.const(matmul.input[1]) is None:
            continue
        if g.const(matmul.input[1]).ndim != 2 or len(shapes.get(matmul.input[0]) or ()) != 2:
            continue
        add = g.only_consumer(matmul.output[0])
        inputs = [matmul.input[0], matmul.input[1]]
        out = matmul.output[0]
        if add is not None and add.op_type == "Add":
            bias_name = g.other_input(add, matmul.output[0])
            bias = g.const(bias_name)
            if bias is not None and bias.ndim == 1:
                inputs.append(bias_name)
                out = add.output[0]
                add.output[0] = g.unique("dead")
        matmul.op_type = "Gemm"
        del matmul.input[:]
        matmul.input.extend(inputs)
        matmul.output[0] = out
        count += 1
    g.prune()
    return count


PASSES = (
    "fuse_layer_norms",
    "gelu_for_fusion",
    "channel_affine_after_transpose",
    "conv_bias_into_conv",
    "bias_before_reshape",
    "slices_of_concat",
    "split_heads",
    "transposes_of_unit_axes",
    "dense_to_gemm",
)


def optimize(model):
    """Runs every pass (in `PASSES` order) on an ONNX model, in place.

    `fuse_layer_norms` needs opset >= 17 and is skipped below it. The passes
    that need static shapes (`bias_before_reshape` onward) find nothing to
    do in a dynamic-batch graph, whose reshapes take computed shapes.

    Returns:
        {pass name: number of rewrites}.
    """
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    counts = {}
    for name in PASSES:
        if name == "fuse_layer_norms" and opset < _OPSET_LAYER_NORM:
            counts[name] = 0
            continue
        counts[name] = globals()[name](model)
    return counts
