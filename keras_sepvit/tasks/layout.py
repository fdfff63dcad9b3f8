"""Channels-last inside: the dense heads run their convolutions on (B, H, W, C).

TensorFlow runs an NCHW Conv2D on a CPU only through oneDNN, which it turns
on by default only on CPUs with AVX-512 VNNI, BF16 or AMX: elsewhere (an
AVX2 AMD EPYC, for one) every channels-first Keras Conv2D raises
`UnimplementedError`. The backbone already works channels-last inside and
transposes once at its input; the Semantic FPN and UperNet heads do the
same: under `data_format="channels_first"` a head transposes its inputs to
channels-last on entry and its output back on exit. Conv kernels and
normalisation weights have the same shapes in both formats, so the weights,
their names and saved files are unchanged.
"""

from keras import ops

INSIDE = "channels_last"


def _transpose(x, axes):
    """`x` transposed by `axes`: a map, or every map of a dict / list."""
    if isinstance(x, dict):
        return {k: _transpose(v, axes) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_transpose(v, axes) for v in x]
    return ops.transpose(x, axes)


def to_inside(x, data_format):
    """A (B, C, H, W) map, or a dict / list of them, to (B, H, W, C) under channels_first."""
    return x if data_format == INSIDE else _transpose(x, (0, 2, 3, 1))


def to_outside(x, data_format):
    """A (B, H, W, C) map, or a dict / list of them, back to (B, C, H, W) under channels_first."""
    return x if data_format == INSIDE else _transpose(x, (0, 3, 1, 2))


def shape_inside(shape, data_format):
    """`to_inside` for a shape tuple, or a dict of them."""
    if data_format == INSIDE:
        return shape
    if isinstance(shape, dict):
        return {k: shape_inside(v, data_format) for k, v in shape.items()}
    batch, channels, height, width = shape
    return (batch, height, width, channels)


def with_channels(shape, channels, data_format):
    """`shape` with its channel axis (last or second, by `data_format`) set to `channels`."""
    shape = list(shape)
    shape[-1 if data_format == "channels_last" else 1] = channels
    return tuple(shape)
