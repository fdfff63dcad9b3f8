"""SepViT building blocks as Keras 3 layers (backend-agnostic: `keras.ops` only).

Paper: Li et al., "SepViT: Separable Vision Transformer", https://arxiv.org/abs/2203.15380
(sections 3.2-3.4). Exact semantics follow the authors' classification code; see
`../shared/reference/README.md` and DEVELOPERS.md.

Tensor layouts used throughout:
  feature map  (B, H, W, C)
  windows      (B, nW, P, C) with nW = gh * gw windows in row-major order and
               P = ws * ws pixels per window in row-major order.

Every reshape/transpose stays at rank <= 5 so that the converted TFLite model
needs builtin ops only (a 6-D transpose needs the Flex delegate).
"""

import math

import keras
from keras import ops

from keras_sepvit.windows import _static_or_dynamic, pad_to_window, window_merge, window_partition

PACKAGE = "keras_sepvit"
_MASK_VALUE = -1e4  # added to the logits of padded keys; exp() underflows to 0

# Classes of the weight-carrying sublayers, looked up when a layer is built.
# `keras_sepvit.qat.quantize_model` swaps in fake-quantized subclasses (same
# weights, same config) while it builds the quantization-aware copy of a
# model, so that there is one model definition; nothing else changes them.
SUBLAYER_CLASSES = {
    "Dense": keras.layers.Dense,
    "DepthwiseConv2D": keras.layers.DepthwiseConv2D,
}


def gelu(x):
    """Exact (erf) GELU, as `torch.nn.GELU()` in the reference model."""
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def _resize_matrix(size_out, size_in):
    """(size_out, size_in) bilinear weights, half-pixel centres (no antialias).

    Identity when size_out == size_in, so the design-resolution path is exact.
    """
    scale = ops.cast(size_in, "float32") / ops.cast(size_out, "float32")
    src = (ops.cast(ops.arange(size_out), "float32") + 0.5) * scale - 0.5
    src = ops.clip(src, 0.0, float(size_in - 1))
    taps = ops.cast(ops.arange(size_in), "float32")
    return ops.relu(1.0 - ops.abs(src[:, None] - taps[None, :]))


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerNorm(keras.layers.LayerNormalization):
    """LayerNormalization over the last axis, written with MUL instead of moments.

    Same weights (`gamma`, `beta`), config and result as
    `keras.layers.LayerNormalization(axis=-1)`, computed as
    `(x - mean) * rsqrt(mean((x - mean) * (x - mean)) + eps) * gamma + beta`.
    Keras' version takes the variance with `moments`, which converts to the
    TFLite op SQUARED_DIFFERENCE; LiteRT has no 16-bit kernel for that op, so
    an int16x8 file of the model would not run. SUB, MUL, MEAN and RSQRT
    have int8 and int16 kernels.
    """

    def call(self, inputs):
        if self.axis not in (-1, [-1], len(inputs.shape) - 1, [len(inputs.shape) - 1]):
            raise ValueError(f"LayerNorm normalizes the last axis only. Received: axis={self.axis}")
        x = ops.cast(inputs, "float32") if self.compute_dtype != "float32" else inputs
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(centered * centered, axis=-1, keepdims=True)
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.cast(self.gamma, x.dtype)
        outputs = centered * scale
        if self.center:
            outputs = outputs + ops.cast(self.beta, x.dtype)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelsLastRescaling(keras.layers.Rescaling):
    """`keras.layers.Rescaling` (`x * scale + offset`) on the last axis, always.

    Keras' layer reshapes a per-channel `scale` for channels-first input when
    `keras.config.image_data_format()` says so at call time; SepViT works
    channels-last inside whatever that setting is (a channels-first model
    transposes once at its input), so the per-channel constants must stay on
    the last axis. Same config and numbers as `Rescaling` on channels-last data.
    """

    def call(self, inputs):
        dtype = self.compute_dtype
        scale = self.backend.cast(self.scale, dtype)
        offset = self.backend.cast(self.offset, dtype)
        return self.backend.cast(inputs, dtype) * scale + offset


@keras.saving.register_keras_serializable(package=PACKAGE)
class WindowPartition(keras.layers.Layer):
    """Splits a feature map into non-overlapping windows, padding if needed.

    `(B, H, W, C) -> (B, nW, ws * ws, C)`, windows and their pixels in
    row-major order (as `timm`'s `window_partition`, but kept at rank 5).
    H and W that are not multiples of the window are zero-padded at the
    bottom/right; `WindowMerge` crops the padding away again.

    Args:
        window_size: int. Side of the square window.

    Example:
    >>> x = keras.ops.ones((2, 14, 21, 8))
    >>> tuple(WindowPartition(7)(x).shape)
    (2, 6, 49, 8)
    """

    def __init__(self, window_size, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(
                f"`window_size` must be a positive int. Received: window_size={window_size}"
            )
        self.window_size = window_size

    def call(self, x):
        return window_partition(pad_to_window(x, self.window_size), self.window_size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        num_windows = None
        if height is not None and width is not None:
            num_windows = math.ceil(height / self.window_size) * math.ceil(width / self.window_size)
        return (batch, num_windows, self.window_size**2, channels)

    def get_config(self):
        return {**super().get_config(), "window_size": self.window_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WindowMerge(keras.layers.Layer):
    """Inverse of `WindowPartition`: windows back to a (B, H, W, C) map.

    Called as `WindowMerge(ws)([windows, reference_map])`; the reference map
    (the tensor that was partitioned) gives H and W, so padding is cropped.

    Args:
        window_size: int. Side of the square window.
    """

    def __init__(self, window_size, **kwargs):
        super().__init__(**kwargs)
        self.window_size = window_size

    def call(self, inputs):
        windows, reference = inputs
        height, width = _static_or_dynamic(reference, 1), _static_or_dynamic(reference, 2)
        grid_h = -(-height // self.window_size)
        grid_w = -(-width // self.window_size)
        x = window_merge(windows, self.window_size, grid_h, grid_w)
        return x[:, :height, :width, :]

    def compute_output_shape(self, input_shape):
        windows_shape, reference_shape = input_shape
        return tuple(reference_shape[:3]) + (windows_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "window_size": self.window_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WindowTokens(keras.layers.Layer):
    """One window token per window, put in front of the window's pixels (Sec. 3.2).

    `(B, nW, P, C) -> (B, nW, 1 + P, C)`. The tokens are laid out on the window
    grid of the design resolution (`grid`, e.g. 8x8 windows of stage 1 at 224,
    stored as `(1, gh * gw, 1, C)` like the authors' `win_tokens`). When the
    model runs at another resolution the token grid is resized bilinearly to
    the actual window grid (the way ViTs resize position embeddings), so one
    set of weights serves every input size; at the design resolution the
    tokens are used as they are.

    Args:
        grid: tuple of 2 ints. Window grid (rows, cols) at the design resolution.
        learnable: bool. Learnable tokens initialised to zero (paper default,
            Table 6 "LWT"), or fixed zero vectors with no weight.
            Defaults to True.
    """

    def __init__(self, grid, learnable=True, **kwargs):
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)
        self.learnable = learnable

    def build(self, input_shape):
        if self.learnable:
            self.tokens = self.add_weight(
                name="tokens",
                shape=(1, self.grid[0] * self.grid[1], 1, input_shape[-1]),
                initializer="zeros",
            )

    def call(self, windows, grid_hw):
        """`grid_hw`: the actual window grid (rows, cols), ints or scalar tensors."""
        return ops.concatenate([self.tokens_for(windows, grid_hw), windows], axis=2)

    def tokens_for(self, windows, grid_hw):
        """The tokens alone, (B, nW, 1, C), for the windows (B, nW, P, C)."""
        batch = ops.shape(windows)[0]
        num_windows = _static_or_dynamic(windows, 1)
        channels = windows.shape[-1]
        if not self.learnable:
            return ops.zeros((batch, num_windows, 1, channels), dtype=windows.dtype)
        tokens = ops.cast(self.tokens, windows.dtype)
        rows, cols = grid_hw
        if not (isinstance(rows, int) and isinstance(cols, int) and (rows, cols) == self.grid):
            grid = ops.reshape(tokens, (self.grid[0], self.grid[1], channels))
            resize_h = ops.cast(_resize_matrix(rows, self.grid[0]), tokens.dtype)
            resize_w = ops.cast(_resize_matrix(cols, self.grid[1]), tokens.dtype)
            grid = ops.einsum("hi,wj,ijc->hwc", resize_h, resize_w, grid)  # (gh, gw, C)
            tokens = ops.reshape(grid, (1, -1, 1, channels))  # (1, nW, 1, C)
        return ops.broadcast_to(tokens, (batch, num_windows, 1, channels))

    def compute_output_shape(self, input_shape, grid_hw=None):
        batch, windows, pixels, channels = input_shape
        return (batch, windows, None if pixels is None else pixels + 1, channels)

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "learnable": self.learnable}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SeparableSelfAttention(keras.layers.Layer):
    """Depthwise separable self-attention: DWA within windows, PWA among them.

    Input `(B, nW, T, C)`: normalised tokens of each window, T = P pixels,
    plus one leading window token when `window_representation="token"`.
    Output `(B, nW, P, C)`: the pixel tokens, projected.

    - DWA (Eq. 1): multi-head self-attention over the T tokens of each window,
      plus the shortcut of the reference code (its input is added back).
    - PWA (Eq. 2, when `pointwise`): a representation of each window
      (its token after DWA, or the mean / a depthwise conv of its DWA pixels,
      Table 7) goes through LayerNorm and GELU to give per-head queries and
      keys among windows; the values are the DWA pixels of each window; a
      second shortcut adds those pixels back.
    - A final Linear projection.

    With `pointwise=False` this is the window (or, with one window, global)
    multi-head self-attention that the reference uses where there is a single
    window.

    Args:
        num_heads: int. Attention heads.
        pointwise: bool. Run PWA among windows. Defaults to True.
        window_representation: str. "token", "avg_pool" or "dw_conv": how PWA
            summarises a window (Table 7). Defaults to "token".
        window_size: int or None. Window side, needed only for "dw_conv".

    `call(tokens, valid_pixels=None)`: `valid_pixels` `(nW, P)` marks real
    pixels (1) and padding (0); padded keys are left out of DWA and padded
    values out of PWA.
    """

    # Export copies only (keras_sepvit.export.inference), see `_heads_attention`.
    fold_shortcut = False
    exp_then_normalise = False

    def __init__(
        self,
        num_heads,
        pointwise=True,
        window_representation="token",
        window_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if window_representation not in ("token", "avg_pool", "dw_conv"):
            raise ValueError(
                "`window_representation` must be one of 'token', 'avg_pool', "
                f"'dw_conv'. Received: window_representation={window_representation!r}"
            )
        if window_representation == "dw_conv" and pointwise and not window_size:
            raise ValueError(
                "`window_representation='dw_conv'` needs `window_size`. "
                f"Received: window_size={window_size}"
            )
        self.num_heads = num_heads
        self.pointwise = pointwise
        self.window_representation = window_representation
        self.window_size = window_size

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.num_heads:
            raise ValueError(
                f"Channels must be divisible by `num_heads`. Received: channels={channels}, "
                f"num_heads={self.num_heads}"
            )
        self.head_dim = channels // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = SUBLAYER_CLASSES["Dense"](3 * channels, name="qkv", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        if self.pointwise:
            self.window_norm = LayerNorm(epsilon=1e-5, name="window_norm", dtype=self.dtype_policy)
            self.window_norm.build((None, None, channels))
            self.pointwise_qk = SUBLAYER_CLASSES["Dense"](
                2 * channels, name="pointwise_qk", dtype=self.dtype_policy
            )
            self.pointwise_qk.build((None, None, channels))
            if self.window_representation == "dw_conv":
                # A ws x ws depthwise conv with stride ws = a per-channel weighted sum.
                self.window_conv_kernel = self.add_weight(
                    name="window_conv_kernel",
                    shape=(self.window_size**2, channels),
                    initializer="glorot_uniform",
                )
                self.window_conv_bias = self.add_weight(
                    name="window_conv_bias", shape=(channels,), initializer="zeros"
                )
        self.proj = SUBLAYER_CLASSES["Dense"](channels, name="proj", dtype=self.dtype_policy)
        self.proj.build((None, None, None, channels))

    def _heads_attention(self, q, k, v, bias=None, plus_v=False):
        """q, k: (N, h, Tq|Tk, d), v: (N, h, Tk, e) -> (N, h, Tq, e), `+ v` if `plus_v`.

        Export copies' forms (int8 TFLite SepViT-Lite about 5% faster each):
        `fold_shortcut`, (weights + I) @ v for a static Tk (no add over v; XNNPACK
        then runs v's DEQUANTIZE inside the matmul); `exp_then_normalise`,
        exp(scores) @ v / sum(exp(scores)), no max pass and the division on
        (Tq, e) not (Tq, Tk). Only for scores known to lie within +-80 (exp
        neither overflows nor underflows): int8 files, whose scores are clamped
        to their int8 range, which `keras_sepvit.export.tflite` checks.
        """
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (N, h, Tq, Tk)
        if self.scale != 1.0:  # 1.0 once folded into the queries (keras_sepvit.inference)
            scores = scores * self.scale
        scores = ops.cast(scores, "float32")
        if bias is not None:
            scores = scores + bias
        if self.exp_then_normalise and not plus_v and bias is None and k.shape[2] != 1:
            weights = ops.exp(scores)  # (N, h, Tq, Tk), unnormalised
            out = ops.matmul(ops.cast(weights, v.dtype), v)  # (N, h, Tq, e)
            return out / ops.cast(ops.sum(weights, axis=-1, keepdims=True), v.dtype)
        if k.shape[2] == 1:
            # One key (one window): weight 1 with a defined (zero) gradient,
            # written out because keras warns on a size-1 softmax axis.
            weights = ops.exp(scores - scores)
        else:
            weights = ops.softmax(scores, axis=-1)
        if plus_v and self.fold_shortcut and isinstance(k.shape[2], int):
            weights, plus_v = weights + ops.eye(k.shape[2], dtype=weights.dtype), False
        out = ops.matmul(ops.cast(weights, v.dtype), v)
        return out + v if plus_v else out

    def call(self, tokens, valid_pixels=None):
        batch = ops.shape(tokens)[0]
        num_windows = _static_or_dynamic(tokens, 1)
        num_tokens = _static_or_dynamic(tokens, 2)
        channels = tokens.shape[-1]
        heads, head_dim = self.num_heads, self.head_dim
        has_token = self.pointwise and self.window_representation == "token"

        # Depthwise self-attention within each window.
        qkv = self.qkv(tokens)  # (B, nW, T, 3C)
        qkv = ops.reshape(qkv, (-1, num_tokens, 3 * heads, head_dim))  # (B*nW, T, 3h, d)
        qkv = ops.transpose(qkv, (0, 2, 1, 3))  # (B*nW, 3h, T, d)
        q, k, v = qkv[:, :heads], qkv[:, heads : 2 * heads], qkv[:, 2 * heads :]
        bias = None
        if valid_pixels is not None:
            key_valid = ops.cast(valid_pixels, "float32")  # (nW, P)
            if has_token:
                key_valid = ops.pad(key_valid, [[0, 0], [1, 0]], constant_values=1.0)
            bias = ops.tile((1.0 - key_valid) * _MASK_VALUE, (batch, 1))  # (B*nW, T)
            bias = ops.reshape(bias, (-1, 1, 1, num_tokens))  # (B*nW, 1, 1, T)
        out = self._heads_attention(q, k, v, bias)  # (B*nW, h, T, d)
        out = ops.transpose(out, (0, 2, 1, 3))  # (B*nW, T, h, d)
        out = ops.reshape(out, (batch, num_windows, num_tokens, channels))  # (B, nW, T, C)
        out = out + tokens  # the reference's shortcut around DWA

        if self.pointwise:
            out = self._pointwise(out, valid_pixels, has_token)
        return self.proj(out)

    def _pointwise(self, out, valid_pixels, has_token):
        batch = ops.shape(out)[0]
        num_windows = _static_or_dynamic(out, 1)
        channels = out.shape[-1]
        heads, head_dim = self.num_heads, self.head_dim
        pixels = out[:, :, 1:, :] if has_token else out  # (B, nW, P, C)
        num_pixels = _static_or_dynamic(pixels, 2)
        if valid_pixels is not None:
            valid = ops.cast(valid_pixels, pixels.dtype)[None, :, :, None]  # (1, nW, P, 1)
            pixels = pixels * valid
        if has_token:
            # A slice then a reshape, not out[:, :, 0]: TFLite's shrinking
            # STRIDED_SLICE is not an XNNPACK op (6 nodes left out of Lite).
            summary = ops.reshape(out[:, :, :1, :], (batch, num_windows, channels))  # (B, nW, C)
        elif self.window_representation == "avg_pool":
            if valid_pixels is None:
                summary = ops.mean(pixels, axis=2)
            else:
                summary = ops.sum(pixels, axis=2) / ops.sum(valid, axis=2)
        else:  # "dw_conv"
            kernel = ops.cast(self.window_conv_kernel, pixels.dtype)
            summary = ops.sum(pixels * kernel, axis=2) + ops.cast(
                self.window_conv_bias, pixels.dtype
            )
        summary = gelu(self.window_norm(summary))
        qk = self.pointwise_qk(summary)  # (B, nW, 2C)
        qk = ops.reshape(qk, (batch, num_windows, 2 * heads, head_dim))  # (B, nW, 2h, d)
        qk = ops.transpose(qk, (0, 2, 1, 3))  # (B, 2h, nW, d)
        q, k = qk[:, :heads], qk[:, heads:]
        v = ops.reshape(pixels, (batch, num_windows, num_pixels, heads, head_dim))
        v = ops.transpose(v, (0, 3, 1, 2, 4))  # (B, h, nW, P, d)
        v = ops.reshape(v, (batch, heads, num_windows, -1))  # (B, h, nW, P*d)
        out = self._heads_attention(q, k, v, plus_v=True)  # second shortcut; (B, h, nW, P*d)
        out = ops.reshape(out, (batch, heads, num_windows, num_pixels, head_dim))
        out = ops.transpose(out, (0, 2, 3, 1, 4))  # (B, nW, P, h, d)
        return ops.reshape(out, (batch, num_windows, num_pixels, channels))  # (B, nW, P, C)

    def compute_output_shape(self, input_shape, valid_pixels_shape=None):
        batch, windows, tokens, channels = input_shape
        if self.pointwise and self.window_representation == "token" and tokens is not None:
            tokens -= 1
        return (batch, windows, tokens, channels)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "pointwise": self.pointwise,
            "window_representation": self.window_representation,
            "window_size": self.window_size,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEncoding(keras.layers.Layer):
    """Conditional position encoding (PEG of CPVT): `x + DWConv3x3(x)`.

    `(B, H, W, C) -> (B, H, W, C)`. SepViT applies it after the first block of
    every stage.

    The residual add runs on the flattened map, `(B, H*W, C)`, which gives the
    same numbers: TensorFlow's oneDNN remapper (on by default on x86 CPUs)
    rewrites a `DepthwiseConv2dNative -> BiasAdd -> Add` chain into a node it
    cannot name (it builds `Add` fusions for Conv2D/Conv3D/MatMul only),
    prints an error and drops every Grappler optimisation of the function.
    The TFLite converter folds the two reshapes away.
    """

    def build(self, input_shape):
        # channels_last whatever keras.config.image_data_format() says: the
        # model transposes channels-first input once at its input.
        self.conv = SUBLAYER_CLASSES["DepthwiseConv2D"](
            3, padding="same", data_format="channels_last", name="conv", dtype=self.dtype_policy
        )
        self.conv.build(input_shape)

    def call(self, x):
        shape = ops.shape(x)
        tokens = (shape[0], -1, x.shape[-1])
        out = ops.reshape(x, tokens) + ops.reshape(self.conv(x), tokens)  # (B, H*W, C)
        return ops.reshape(out, shape)  # (B, H, W, C)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample in training.

    Args:
        rate: float in [0, 1). Probability of dropping the branch.
        seed: int or None. Seed of the random generator.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate}")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator)
        return x * ops.floor(keep + noise) / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


ATTENTION_KINDS = ("separable", "window", "global")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SepViTBlock(keras.layers.Layer):
    """A SepViT block (Eqs. 5-9): pre-norm separable attention, then an MLP.

    `(B, H, W, C) -> (B, H, W, C)`:
    `x = x + DropPath(Attention(LN(x)))`; `x = x + DropPath(MLP(LN(x)))`.

    `attention` selects what the block computes, matching the reference model:
      - "separable": DSSA with window size 7, or GSA with 14 (Sec. 3.3): window
        tokens, DWA in each window, PWA among windows. H, W that are not
        multiples of the window are padded; padded keys are masked out.
      - "window": DWA in ws x ws windows, no PWA (the reference's single-window
        blocks, used at other resolutions by stage-3 GSA blocks).
      - "global": one window covering the whole map (the reference's stage 4).

    Args:
        num_heads: int. Attention heads.
        window_size: int. Window side (7 for DSSA, 14 for GSA).
        attention: str. One of "separable", "window", "global". Defaults to
            "separable".
        token_grid: tuple of 2 ints or None. Window grid at the design
            resolution; sets the shape of the learnable window tokens.
            Required for "separable" with `window_representation="token"`.
        window_token: str. "learnable" or "zero" (Table 6). Defaults to
            "learnable".
        window_representation: str. "token", "avg_pool" or "dw_conv" (Table 7).
            Defaults to "token".
        mlp_ratio: float. MLP hidden width / channels. Defaults to 4.
        drop_path_rate: float. Stochastic depth rate of this block.
    """

    def __init__(
        self,
        num_heads,
        window_size=7,
        attention="separable",
        token_grid=None,
        window_token="learnable",
        window_representation="token",
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention not in ATTENTION_KINDS:
            raise ValueError(
                f"`attention` must be one of {ATTENTION_KINDS}. Received: attention={attention!r}"
            )
        if window_token not in ("learnable", "zero"):
            raise ValueError(
                "`window_token` must be 'learnable' or 'zero'. "
                f"Received: window_token={window_token!r}"
            )
        uses_tokens = attention == "separable" and window_representation == "token"
        if uses_tokens and window_token == "learnable" and token_grid is None:
            raise ValueError(
                "Learnable window tokens need `token_grid` (the window grid at the "
                "design resolution). Received: token_grid=None"
            )
        self.num_heads = num_heads
        self.window_size = window_size
        self.attention = attention
        self.token_grid = tuple(token_grid) if token_grid is not None else None
        self.window_token = window_token
        self.window_representation = window_representation
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate

    def build(self, input_shape):
        channels = input_shape[-1]
        policy = self.dtype_policy
        self.norm1 = LayerNorm(epsilon=1e-6, name="norm1", dtype=policy)
        self.norm1.build(input_shape)
        if self.attention == "separable" and self.window_representation == "token":
            self.window_tokens = WindowTokens(
                self.token_grid or (1, 1),
                learnable=self.window_token == "learnable",
                name="window_tokens",
                dtype=policy,
            )
            self.window_tokens.build(input_shape)
        else:
            self.window_tokens = None
        self.attn = SeparableSelfAttention(
            self.num_heads,
            pointwise=self.attention == "separable",
            window_representation=self.window_representation,
            window_size=self.window_size,
            name="attn",
            dtype=policy,
        )
        self.attn.build((None, None, None, channels))
        self.norm2 = LayerNorm(epsilon=1e-6, name="norm2", dtype=policy)
        self.norm2.build(input_shape)
        hidden = int(channels * self.mlp_ratio)
        self.fc1 = SUBLAYER_CLASSES["Dense"](hidden, name="fc1", dtype=policy)
        self.fc1.build(input_shape)
        self.fc2 = SUBLAYER_CLASSES["Dense"](channels, name="fc2", dtype=policy)
        self.fc2.build(tuple(input_shape[:-1]) + (hidden,))
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path", dtype=policy)

    def _attention(self, y):
        """Normalised map (B, H, W, C) -> attention output (B, H, W, C)."""
        if self.attention == "global":
            batch, channels = ops.shape(y)[0], y.shape[-1]
            tokens = ops.reshape(y, (batch, 1, -1, channels))  # (B, 1, H*W, C)
            return ops.reshape(self.attn(tokens), ops.shape(y))  # (B, H, W, C)
        ws = self.window_size
        height, width = _static_or_dynamic(y, 1), _static_or_dynamic(y, 2)
        # The "dw_conv" summary weighs every slot of the ws x ws window, so it
        # keeps the padded window.
        fits = isinstance(height, int) and isinstance(width, int) and height <= ws and width <= ws
        if fits and not (self.attention == "separable" and self.window_representation == "dw_conv"):
            # The map fits in one window: attending over the map itself equals the
            # padded, masked window (tested) without computing on the padding.
            batch, channels = ops.shape(y)[0], y.shape[-1]
            windows = ops.reshape(y, (batch, 1, height * width, channels))  # (B, 1, H*W, C)
            if self.window_tokens is not None:
                windows = self._with_tokens(windows, (1, 1))
            return ops.reshape(self.attn(windows), ops.shape(y))  # (B, H, W, C)
        grid_h, grid_w = -(-height // ws), -(-width // ws)
        padded = not (isinstance(height, int) and isinstance(width, int))
        padded = padded or height % ws != 0 or width % ws != 0
        valid_pixels = None
        if padded:
            valid = ops.ones_like(y[:1, :, :, :1])  # (1, H, W, 1)
            valid = window_partition(pad_to_window(valid, ws), ws)  # (1, nW, P, 1)
            valid_pixels = ops.reshape(valid, (-1, ws * ws))  # (nW, P)
        windows = window_partition(pad_to_window(y, ws), ws)  # (B, nW, P, C)
        if self.window_tokens is not None:
            windows = self._with_tokens(windows, (grid_h, grid_w))
        out = self.attn(windows, valid_pixels=valid_pixels)  # (B, nW, P, C)
        out = window_merge(out, ws, grid_h, grid_w)  # (B, Hp, Wp, C)
        if padded:
            out = out[:, :height, :width, :]
        return out

    def _with_tokens(self, windows, grid_hw):
        """(B, nW, P, C) -> (B, nW, 1 + P, C), normalised tokens in front: norm1 is per
        token, and apart from the pixels it is a constant for the converters."""
        tokens = self.norm1(self.window_tokens.tokens_for(windows, grid_hw))
        return ops.concatenate([tokens, windows], axis=2)

    def call(self, x, training=None):
        x = x + self.drop_path(self._attention(self.norm1(x)), training=training)
        y = self.fc2(gelu(self.fc1(self.norm2(x))))
        return x + self.drop_path(y, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "attention": self.attention,
            "token_grid": self.token_grid,
            "window_token": self.window_token,
            "window_representation": self.window_representation,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rate": self.drop_path_rate,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupedSelfAttention(SepViTBlock):
    """Grouped self-attention block (GSA, Sec. 3.3): a SepViT block whose window
    splices 2x2 neighbouring 7x7 windows into one 14x14 group.

    Same arguments as `SepViTBlock`; `window_size` defaults to 14.
    """

    def __init__(self, num_heads, window_size=14, **kwargs):
        super().__init__(num_heads, window_size=window_size, **kwargs)
