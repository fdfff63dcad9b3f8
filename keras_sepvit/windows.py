"""Window helpers of the SepViT blocks: padding a map to whole windows, and
window partition / merge (`keras.ops` only; ranks <= 5, so a converted
TFLite file needs builtin ops only).

Layouts: a map is (B, H, W, C); its windows are (B, nW, P, C), with the
nW = gh * gw windows and the P = ws * ws pixels of each in row-major order.
"""

from keras import ops


def _static_or_dynamic(x, axis):
    """The static size of `x` along `axis` if known, else a scalar tensor."""
    static = x.shape[axis]
    return static if static is not None else ops.shape(x)[axis]


def pad_to_window(x, window_size):
    """Zero-pads a (B, H, W, C) map at the bottom/right to multiples of the window.

    Returns the padded map. With static shapes that are already multiples this
    is a no-op (no op is emitted).
    """
    height, width = _static_or_dynamic(x, 1), _static_or_dynamic(x, 2)
    pad_h = (-height) % window_size
    pad_w = (-width) % window_size
    if isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == 0 and pad_w == 0:
        return x
    return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])


def window_partition(x, window_size):
    """(B, Hp, Wp, C) -> (B, gh * gw, ws * ws, C); Hp, Wp multiples of ws."""
    channels = x.shape[-1]
    batch = ops.shape(x)[0]
    grid_w = _static_or_dynamic(x, 2) // window_size
    x = ops.reshape(x, (-1, window_size, grid_w, window_size, channels))  # (B*gh, ws, gw, ws, C)
    x = ops.transpose(x, (0, 2, 1, 3, 4))  # (B*gh, gw, ws, ws, C)
    return ops.reshape(x, (batch, -1, window_size * window_size, channels))  # (B, nW, P, C)


def window_merge(windows, window_size, grid_h, grid_w):
    """(B, gh * gw, ws * ws, C) -> (B, gh * ws, gw * ws, C); inverse of partition."""
    channels = windows.shape[-1]
    batch = ops.shape(windows)[0]
    x = ops.reshape(
        windows, (-1, grid_w, window_size, window_size, channels)
    )  # (B*gh, gw, ws, ws, C)
    x = ops.transpose(x, (0, 2, 1, 3, 4))  # (B*gh, ws, gw, ws, C)
    return ops.reshape(
        x, (batch, grid_h * window_size, grid_w * window_size, channels)
    )  # (B, Hp, Wp, C)
