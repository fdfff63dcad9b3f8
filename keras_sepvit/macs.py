"""Counts multiply-accumulates of a Keras model from its traced TensorFlow graph.

Only convolutions and matrix products are counted (MatMul, BatchMatMul,
Conv2D, DepthwiseConv2dNative, Einsum), read off the ops' static shapes: the
count is of what the graph computes, not of a formula we maintain. TensorFlow
backend only (a profiling utility, like the training and export modules).
"""

import numpy as np


def _dims(tensor):
    return [int(d) for d in tensor.shape]


def _op_macs(op):
    kind = op.type
    if kind == "MatMul":
        a = _dims(op.inputs[0])
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return int(np.prod(_dims(op.outputs[0]))) * k
    if kind in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = _dims(op.inputs[0])
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return int(np.prod(_dims(op.outputs[0]))) * k
    if kind == "Conv2D":
        kh, kw, cin, _ = _dims(op.inputs[1])
        return int(np.prod(_dims(op.outputs[0]))) * kh * kw * cin
    if kind == "DepthwiseConv2dNative":
        kh, kw, _, _ = _dims(op.inputs[1])
        return int(np.prod(_dims(op.outputs[0]))) * kh * kw
    if kind == "Einsum":
        equation = op.get_attr("equation").decode()
        lhs, out = equation.split("->")
        sizes = {}
        for term, tensor in zip(lhs.split(","), op.inputs):
            sizes.update(zip(term, _dims(tensor)))
        return int(np.prod([sizes[c] for c in set(lhs) - {","}]))
    return 0


def count_macs(model, input_shape=None):
    """Multiply-accumulates of one forward pass at batch 1.

    Args:
        model: a Keras model (TensorFlow backend).
        input_shape: `(H, W, C)`; defaults to the model's static input shape.

    Returns:
        int: the number of MACs of convolutions and matrix products.
    """
    import tensorflow as tf

    shape = tuple(input_shape or model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"count_macs needs a static input shape. Received: input_shape={shape}")
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1,) + shape, tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        total += _op_macs(op)
    return total
