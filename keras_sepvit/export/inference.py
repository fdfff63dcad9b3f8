"""Export-time copies of a SepViT: static batch and exact weight folds.

`inference_model(model)` returns a new Keras model that computes the same
function as `model` (same outputs to float rounding; the reference-parity
tests hold it to 1e-4 against the authors' logits), built for edge
converters:

- a static batch dimension (default 1): a dynamic-batch TFLite file carries
  shape arithmetic (SHAPE, PACK, STRIDED_SLICE on int32) that XNNPACK does
  not run; the batch-1 file measured 0.88-0.92x the dynamic-batch one;
- the input normalisation folded into the stem convolution: the `Rescaling`
  (x * s + o per channel) and the stem's zero padding become one per-channel
  padding (`ConstantPadding2D`, with the pixel value that normalises to 0)
  and a convolution whose weights absorb s and o. This is exact, borders
  included: zero padding in normalised space is the mean pixel in raw space;
- the attention score scale (head_dim ** -0.5) folded into the query columns
  of the `qkv` and `pointwise_qk` projections, so that no MUL runs over the
  (windows, heads, tokens, tokens) score tensors;
- PWA's second shortcut `A @ v + v` computed as `(A + I) @ v`
  (`SeparableSelfAttention.fold_shortcut`): no ADD over the values, and
  XNNPACK then runs the values' DEQUANTIZE inside the matmul (int8
  SepViT-Lite about 5% faster). Training keeps `+ v` (the rounding differs);
- on request (`bounded_scores`, the int8 TFLite file), window attention as
  exp(scores) @ v / sum(exp(scores)): no max pass (int8 file about 5%
  faster), for scores known to lie within +-80;
- on request (`space_to_depth_stem`, the int8 TFLite file), the folded stem
  convolution (kernel k, stride s) as a space-to-depth rearrangement
  (`SpaceToDepth`, block s) and a ceil(k / s)-wide convolution over s * s
  times the channels, its kernel zero-padded to a multiple of s: the same
  sums, in a shape int8 kernels run well (7x7 stride 4 over 3 channels ->
  2x2 over 48; the int8 SepViT-Lite file about 4% faster).

The source model is never modified: the folds act on a clone.
"""

import keras
import numpy as np
from keras import ops

from keras_sepvit.export import qat
from keras_sepvit.layers import PACKAGE, SeparableSelfAttention

__all__ = [
    "ConstantPadding2D",
    "SpaceToDepth",
    "has_fake_quantization",
    "inference_model",
    "space_to_depth_stem_names",
    "stem_names",
]


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantPadding2D(keras.layers.Layer):
    """Pads a (B, H, W, C) map with a per-channel constant, by concatenation.

    Args:
        padding: ((top, bottom), (left, right)) ints.
        value: list of C floats, the value of each channel in the padding.

    `(B, H, W, C) -> (B, top + H + bottom, left + W + right, C)`. With a
    static batch the padding strips are constants of the converted graph.
    """

    def __init__(self, padding, value, **kwargs):
        super().__init__(**kwargs)
        padding = tuple(tuple(int(p) for p in side) for side in padding)
        if len(padding) != 2 or any(len(s) != 2 or min(s) < 0 for s in padding):
            raise ValueError(
                "`padding` must be ((top, bottom), (left, right)) non-negative ints. "
                f"Received: padding={padding}"
            )
        self.padding = padding
        self.value = [float(v) for v in value]

    def call(self, x):
        batch = ops.shape(x)[0]
        channels = x.shape[3]
        if channels != len(self.value):
            raise ValueError(
                f"ConstantPadding2D has {len(self.value)} channel values for a map with "
                f"{channels} channels. Received: value={self.value}"
            )
        value = ops.cast(ops.convert_to_tensor(self.value), x.dtype)  # (C,)
        for axis, (before, after) in ((1, self.padding[0]), (2, self.padding[1])):
            parts = []
            for size in (before, None, after):
                if size is None:
                    parts.append(x)
                elif size:
                    shape = [batch, x.shape[1], x.shape[2], channels]
                    shape[axis] = size
                    parts.append(ops.broadcast_to(value, tuple(shape)))
            x = ops.concatenate(parts, axis=axis) if len(parts) > 1 else x
        return x  # (B, top + H + bottom, left + W + right, C)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        (top, bottom), (left, right) = self.padding
        return (batch, height + top + bottom, width + left + right, channels)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "value": self.value}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpaceToDepth(keras.layers.Layer):
    """Moves each block x block patch of pixels into the channels.

    Args:
        block_size: int >= 2, dividing the map's height and width.

    `(B, H, W, C) -> (B, H / b, W / b, b * b * C)`; the pixel (b * y + i,
    b * x + j, c) goes to (y, x, (i * b + j) * C + c), TensorFlow's
    `tf.nn.space_to_depth` order. Written as reshapes and one 5-D transpose,
    builtin TFLite ops that XNNPACK runs (in int8 too).
    """

    def __init__(self, block_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
            raise ValueError(
                f"`block_size` must be an int >= 2. Received: block_size={block_size!r}"
            )
        self.block_size = block_size

    def call(self, x):
        b = self.block_size
        _, height, width, channels = x.shape
        if height % b or width % b:
            raise ValueError(
                f"SpaceToDepth(block_size={b}) needs a height and width divisible by {b}. "
                f"Received: input shape {tuple(x.shape)}"
            )
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, height // b, b, width // b, b * channels))  # (B, y, i, x, j*C+c)
        x = ops.transpose(x, (0, 1, 3, 2, 4))  # (B, y, x, i, j*C+c)
        return ops.reshape(x, (batch, height // b, width // b, b * b * channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        b = self.block_size
        return (batch, height // b, width // b, b * b * channels)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


def _single_consumer(layer):
    return len(getattr(layer, "_outbound_nodes", [])) == 1


def _foldable_stem(model):
    """(Rescaling, ZeroPadding2D, Conv2D) when the model starts with exactly
    that chain (as `keras_sepvit.SepViT` with `include_preprocessing=True`
    builds it), else None."""
    try:
        norm = model.get_layer("normalization")
        pad = model.get_layer("stage1_embed_pad")
        conv = model.get_layer("stage1_embed_conv")
    except ValueError:
        return None
    if not (
        isinstance(norm, keras.layers.Rescaling)
        and isinstance(pad, keras.layers.ZeroPadding2D)
        and type(conv) is keras.layers.Conv2D
        and conv.padding == "valid"
        and conv.dilation_rate == (1, 1)
        and conv.groups == 1
        and conv.activation is keras.activations.linear
        and len(model.inputs) == 1
        and norm.input is model.inputs[0]
        and pad.input is norm.output
        and conv.input is pad.output
        and _single_consumer(norm)
        and _single_consumer(pad)
    ):
        return None
    return norm, pad, conv


def _folded_stem(norm, pad, conv, input_hw):
    """The per-channel padding and the folded convolution replacing
    normalisation -> zero padding -> conv."""
    channels = conv.kernel.shape[2]
    scale = np.broadcast_to(np.asarray(norm.scale, "float64"), (channels,))
    offset = np.broadcast_to(np.asarray(norm.offset, "float64"), (channels,))
    if np.any(scale == 0):
        raise ValueError(f"Cannot fold a normalisation with a zero scale. Received: {scale}")
    (top, bottom), (left, right) = pad.padding
    # Only the padding a window of the convolution reads is kept (e.g. at 224,
    # kernel 7, stride 4, pad 3: the bottom/right rows are never read).
    needed = []
    for size, before, after, k, s in zip(
        input_hw, (top, left), (bottom, right), conv.kernel_size, conv.strides
    ):
        out = (size + before + after - k) // s + 1
        last = (out - 1) * s + k - 1 - before  # last raw index read
        needed.append(max(0, min(after, last - (size - 1))))
    kernel = np.asarray(conv.kernel, "float64")  # (kh, kw, C_in, C_out)
    bias = np.asarray(conv.bias, "float64") if conv.use_bias else np.zeros(kernel.shape[-1])
    folded_kernel = kernel * scale[None, None, :, None]
    folded_bias = bias + np.einsum("hwio,i->o", kernel, offset)
    padding = ConstantPadding2D(
        ((top, needed[0]), (left, needed[1])),
        value=list(-offset / scale),  # the raw pixel that normalises to 0
        name="stage1_embed_meanpad",
    )
    folded = keras.layers.Conv2D(
        kernel.shape[-1],
        conv.kernel_size,
        strides=conv.strides,
        name="stage1_embed_conv_folded",
    )
    return padding, folded, (folded_kernel.astype("float32"), folded_bias.astype("float32"))


def _space_to_depth_stem(padding, conv, weights, input_hw):
    """The folded stem as (padding, SpaceToDepth, convolution, weights), or
    None where its stride is 1 or differs by axis, or its padding would
    have to shrink. Same sums: the kernel is zero-padded to n * s per axis
    (n = ceil(k / s)) and split into s x s phases; the input is mean-padded
    to s * (out + n - 1) per axis, the extra rows read by zero taps only."""
    stride = conv.strides[0]
    if stride < 2 or conv.strides[1] != stride:
        return None
    kernel, bias = weights  # (kh, kw, C, O)
    sizes, ends = [], []
    for size, (before, after), k in zip(input_hw, padding.padding, conv.kernel_size):
        out = (size + before + after - k) // stride + 1
        taps = -(-k // stride)  # n: the new kernel's size on this axis
        end = stride * (out + taps - 1) - before - size  # padding after the map
        if end < 0:
            return None
        sizes.append(taps)
        ends.append(end)
    (top, _), (left, _) = padding.padding
    channels, filters = kernel.shape[2:]
    padded = np.zeros((sizes[0] * stride, sizes[1] * stride, channels, filters), "float32")
    padded[: kernel.shape[0], : kernel.shape[1]] = kernel
    # (a * s + i, b * s + j, c, o) -> (a, b, (i * s + j) * C + c, o): SpaceToDepth's order.
    split = padded.reshape(sizes[0], stride, sizes[1], stride, channels, filters)
    split = split.transpose(0, 2, 1, 3, 4, 5).reshape(*sizes, stride * stride * channels, filters)
    return (
        ConstantPadding2D(
            ((top, ends[0]), (left, ends[1])), value=padding.value, name="stage1_embed_meanpad_s2d"
        ),
        SpaceToDepth(stride, name="stage1_embed_space_to_depth"),
        keras.layers.Conv2D(filters, tuple(sizes), name="stage1_embed_conv_s2d"),
        (split, bias),
    )


def _fold_attention(model, bounded_scores=False):
    """Multiplies the query columns of each attention's projections by
    head_dim ** -0.5 and sets the layer's score scale to 1 (no MUL traced);
    sets the export forms `fold_shortcut` and, with `bounded_scores`,
    `exp_then_normalise` (`SeparableSelfAttention._heads_attention`)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, SeparableSelfAttention):
            layer.fold_shortcut = True  # PWA's `+ v` as (A + I) @ v: XNNPACK fuses v's DEQUANTIZE
            layer.exp_then_normalise = bounded_scores
        if not isinstance(layer, SeparableSelfAttention) or layer.scale == 1.0:
            continue
        channels = layer.qkv.kernel.shape[0]
        projections = [layer.qkv] + ([layer.pointwise_qk] if layer.pointwise else [])
        for dense in projections:
            kernel, bias = np.asarray(dense.kernel), np.asarray(dense.bias)
            kernel[:, :channels] *= layer.scale  # the query columns come first
            bias[:channels] *= layer.scale
            dense.kernel.assign(kernel)
            dense.bias.assign(bias)
        layer.scale = 1.0


def has_fake_quantization(model):
    """Whether `model` holds fake-quantized layers (`keras_sepvit.export.qat`)."""
    return bool(qat.quantizers(model))


def inference_model(
    model, batch_size=1, fold=True, bounded_scores=False, space_to_depth_stem=False
):
    """A copy of `model` for edge conversion (see the module docstring).

    Args:
        model: a functional Keras model with a static input size.
        batch_size: int or None. The static batch of the copy (None: dynamic).
        fold: bool. Fold the input normalisation into the stem convolution and
            the attention scale into the query projections. Models with
            fake quantization (`keras_sepvit.export.qat`) are never folded: their
            trained ranges belong to the unfolded weights.
        bounded_scores: bool. With `fold`, attention as exp(scores) @ v / sum
            (`SeparableSelfAttention.exp_then_normalise`): only for a file whose
            scores are clamped within +-80 (an int8 file, checked after).
        space_to_depth_stem: bool. With `fold`, the folded stem convolution as
            space-to-depth and a small convolution (module docstring), where
            its stride allows; `space_to_depth_stem_names` finds its layers.

    Returns:
        A new `keras.Model` taking (batch_size, H, W, C) float32.
    """
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive int or None. Received: batch_size={batch_size!r}"
        )
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise ValueError(
            "inference_model needs a functional Keras model with one input. "
            f"Received: {type(model).__name__}"
        )
    shape = tuple(model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"inference_model needs a static input size. Received: input_shape={model.input_shape}"
        )
    inputs = keras.Input(batch_shape=(batch_size,) + shape, name="image")
    if not fold or has_fake_quantization(model):
        return keras.Model(inputs, model(inputs), name=f"{model.name}_inference")

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    _fold_attention(clone, bounded_scores)
    stem = _foldable_stem(clone)
    if stem is None:
        return keras.Model(inputs, clone(inputs), name=f"{model.name}_inference")
    norm, pad, conv = stem
    padding, folded, weights = _folded_stem(norm, pad, conv, shape[:2])
    rearranged = space_to_depth_stem and _space_to_depth_stem(padding, conv, weights, shape[:2])
    if rearranged:
        padding, space_to_depth, folded, weights = rearranged
        x = padding(inputs)  # (B, s * (H' + n - 1), s * (W' + n - 1), 3); H' = H / s
        x = space_to_depth(x)  # (B, H' + n - 1, W' + n - 1, s * s * 3)
    else:
        x = padding(inputs)  # (B, H + pads, W + pads, 3): raw pixels, mean-padded
    x = folded(x)  # (B, H / 4, W / 4, C): as conv(zero_pad(normalise(image)))
    folded.set_weights(list(weights))
    rest = keras.Model(conv.output, clone.output, name=f"{model.name}_body")
    return keras.Model(inputs, rest(x), name=f"{model.name}_inference")


def space_to_depth_stem_names(model):
    """Layer names of a `space_to_depth_stem` copy's stem (padding,
    SpaceToDepth, convolution); [] if it has none."""
    names = ["stage1_embed_meanpad_s2d", "stage1_embed_space_to_depth", "stage1_embed_conv_s2d"]
    return names if set(names) <= {layer.name for layer in model.layers} else []


def stem_names(model):
    """Layer names of the stem (padding and first convolution) of a model or
    its `inference_model` copy, folded or not; [] if there is none."""
    present = {layer.name for layer in model.layers}
    for layer in model.layers:  # an unfolded copy nests the source model
        if isinstance(layer, keras.Model):
            present |= {sub.name for sub in layer.layers}
    for names in (
        ["stage1_embed_meanpad", "stage1_embed_conv_folded"],
        ["stage1_embed_pad", "stage1_embed_conv"],
    ):
        if set(names) <= present:
            return names
    return []
