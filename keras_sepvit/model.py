"""The SepViT model: a variant table, one generic builder, thin variants.

Reference: Li et al., "SepViT: Separable Vision Transformer",
https://arxiv.org/abs/2203.15380 (Table 1), and the authors' classification
code (github liwei109/SepViT), whose weights `load_official_weights` reads.
"""

import json
import numbers
from importlib import resources

import keras
import numpy as np
from keras import layers

from keras_sepvit.layers import ChannelsLastRescaling, LayerNorm, PositionEncoding, SepViTBlock
from keras_sepvit.weight_files import check_weights_path, load_weights

# Table 1 of the paper; window sizes per block from the authors' code
# (7 = DSSA, 14 = GSA, alternating in stages 2-3).
_WS_T = ((7,), (7, 14), (7, 14) * 3, (7, 7))
_WS_B = ((7,), (7, 14), (7, 14) * 7, (7, 7))
MODEL_CONFIGS = {
    "lite": {
        "depths": (1, 2, 6, 2),
        "channels": (32, 64, 128, 256),
        "num_heads": (1, 2, 4, 8),
        "window_sizes": _WS_T,
    },
    "tiny": {
        "depths": (1, 2, 6, 2),
        "channels": (96, 192, 384, 768),
        "num_heads": (3, 6, 12, 24),
        "window_sizes": _WS_T,
        "drop_path_rate": 0.2,
    },
    "small": {
        "depths": (1, 2, 14, 2),
        "channels": (96, 192, 384, 768),
        "num_heads": (3, 6, 12, 24),
        "window_sizes": _WS_B,
        "drop_path_rate": 0.3,
    },
    "base": {
        "depths": (1, 2, 14, 2),
        "channels": (128, 256, 512, 1024),
        "num_heads": (4, 8, 16, 32),
        "window_sizes": _WS_B,
        "drop_path_rate": 0.5,
    },
}

# The authors' model is defined at 224: a block has window tokens and PWA iff
# its stage map at 224 holds more than one window. We keep exactly that weight
# layout and carry it to every resolution (see `block_attention`).
DESIGN_RESOLUTION = 224
STAGE_STRIDES = (4, 8, 16, 32)
TOTAL_STRIDE = STAGE_STRIDES[-1]
# Smallest input side: one pixel at stride 32 (as keras.applications' min_size).
MIN_SIZE = TOTAL_STRIDE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inputs with another channel count than RGB (grayscale, RGBA, ...): every
# channel is normalised with the RGB statistics averaged over the channels.
OTHER_MEAN = sum(IMAGENET_MEAN) / 3
OTHER_STD = sum(IMAGENET_STD) / 3


def block_attention(stage, window_size):
    """Attention kind and design-resolution window grid of a block.

    Returns `(kind, grid)`: "separable" with the 224 window grid where the
    reference has window tokens and PWA; otherwise the block has no PWA
    weights, and it attends within ws x ws windows ("window", stage-3 GSA,
    whose cross-window exchange comes from the DSSA blocks it alternates
    with) or over the whole map ("global", the last stage, which has no PWA
    block to give it a global view).
    """
    side = DESIGN_RESOLUTION // STAGE_STRIDES[stage]
    grid = side // window_size
    if grid > 1:
        return "separable", (grid, grid)
    return ("global" if stage == len(STAGE_STRIDES) - 1 else "window"), None


BASE_DOCSTRING = """Instantiates the {name} architecture.

Reference: [SepViT: Separable Vision Transformer](https://arxiv.org/abs/2203.15380)
(Li et al., 2022), matching the authors' classification code number for
number (`keras_sepvit.load_official_weights`).

The model takes images of any height and width of at least 32 pixels,
static or `None`; sizes that are not multiples of the windows are padded
inside each block and the padding is masked out of the attention. It
follows `keras.config.image_data_format()`: `(H, W, C)` inputs for
"channels_last", `(C, H, W)` for "channels_first" (transposed once at the
input and at the output; the layers work channels-last). By default
(`include_preprocessing=True`) it takes pixel values in [0, 255] and
normalises them with the ImageNet mean/std inside (other channel counts than
3: every channel with the channel-averaged mean/std).

Args:
    include_top: bool. Whether to include the final LayerNorm-pool-Dense
        classifier. Defaults to True.
    weights: None or the path of a `.weights.h5` / `.keras` file to load
        (no downloads: the authors published no ImageNet weights). For the
        authors' PyTorch state dict use `keras_sepvit.load_official_weights`.
        Defaults to None.
    input_tensor: optional Keras tensor (a `keras.Input` or a layer's output)
        to use as the image input.
    input_shape: optional `(H, W, C)` tuple (`(C, H, W)` for
        "channels_first"); H and W at least 32 or None. Defaults to
        `(224, 224, 3)` with the top and `(None, None, 3)` without.
    pooling: None, "avg" or "max": pooling of the last feature map when
        `include_top=False`. Defaults to None (the 4-D map).
    classes: int. Number of classes when `include_top=True` (ignored
        otherwise). Defaults to 1000.
    classifier_activation: str or callable for the top layer, or None for
        logits. Defaults to "softmax".
    include_preprocessing: bool. Take [0, 255] pixels and normalise inside
        (True), or take normalised input like the authors' model (False).
        Defaults to True.
    drop_path_rate: float in [0, 1). Stochastic depth rate of the last block
        (linear rule over blocks). Defaults to the paper's value for the
        variant.
    window_token: "learnable" or "zero": window token embedding (Table 6).
        Defaults to "learnable".
    window_representation: "token", "avg_pool" or "dw_conv": how PWA
        summarises a window (Table 7). Defaults to "token".
    dense: bool. Build the authors' detection/segmentation backbone
        (`keras_sepvit.dense`; needs `include_top=False`): every block pads
        to its window unmasked with a zero window token and runs PWA, and a
        LayerNorm per stage gives the stage outputs
        (`keras_sepvit.feature_pyramid(model)`: P2..P5). Defaults to False.
    name: str. Model name.

Returns:
    A `keras.Model`.

Example:
>>> model = keras_sepvit.{fn}(weights=None)
>>> model.output_shape
(None, 1000)
"""


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_ints(arg, value, count):
    """`value` as a tuple of `count` positive Python ints, or a ValueError."""
    try:
        entries = tuple(value)
    except TypeError:
        entries = None
    if entries is None or len(entries) != count:
        raise ValueError(f"`{arg}` needs {count} entries, one per stage. Received: {arg}={value!r}")
    if not all(_is_int(v) and v >= 1 for v in entries):
        raise ValueError(f"`{arg}` entries must be positive ints. Received: {arg}={value!r}")
    return tuple(int(v) for v in entries)


def _validate_config(depths, channels, num_heads, window_sizes, mlp_ratio, drop_path_rate):
    """The per-stage table as Python ints, each entry checked (ValueError otherwise)."""
    stages = len(STAGE_STRIDES)
    depths = _positive_ints("depths", depths, stages)
    channels = _positive_ints("channels", channels, stages)
    num_heads = _positive_ints("num_heads", num_heads, stages)
    for stage, (width, heads) in enumerate(zip(channels, num_heads)):
        if width % heads:
            raise ValueError(
                f"Stage {stage + 1} has {width} channels, not divisible by its {heads} "
                f"heads. Received: channels={channels}, num_heads={num_heads}"
            )
    try:
        per_stage = [tuple(sizes) for sizes in window_sizes]
    except TypeError:
        per_stage = None
    if per_stage is None or len(per_stage) != stages:
        raise ValueError(
            f"`window_sizes` needs {stages} entries, one tuple of window sizes per stage. "
            f"Received: window_sizes={window_sizes!r}"
        )
    for stage, (depth, sizes) in enumerate(zip(depths, per_stage)):
        if len(sizes) != depth:
            raise ValueError(
                f"Stage {stage + 1} has {depth} blocks but {len(sizes)} window sizes. "
                f"Received: window_sizes={window_sizes!r}"
            )
        if not all(_is_int(ws) and ws >= 1 for ws in sizes):
            raise ValueError(
                f"Window sizes must be positive ints. Received: window_sizes={window_sizes!r}"
            )
    window_sizes = tuple(tuple(int(ws) for ws in sizes) for sizes in per_stage)
    if not (_is_number(drop_path_rate) and 0.0 <= drop_path_rate < 1.0):
        raise ValueError(
            "`drop_path_rate` must be a float in [0, 1). "
            f"Received: drop_path_rate={drop_path_rate!r}"
        )
    if not (_is_number(mlp_ratio) and int(min(channels) * mlp_ratio) >= 1):
        raise ValueError(f"`mlp_ratio` must be a positive float. Received: mlp_ratio={mlp_ratio!r}")
    return depths, channels, num_heads, window_sizes, float(drop_path_rate), float(mlp_ratio)


def _validate_input_shape(
    input_shape, input_tensor, include_top, data_format, name, arg="input_shape"
):
    """The (H, W, C) or (C, H, W) input shape, checked; defaults as keras.applications.

    `arg`: the argument's name in error messages (`SepViTBackbone` calls it
    `image_shape`).
    """
    if input_tensor is not None:
        if not keras.utils.is_keras_tensor(input_tensor):
            raise ValueError(
                "`input_tensor` must be a Keras tensor (a `keras.Input(...)` or a layer's "
                "output). To run the model on a tensor of images, build it and call it: "
                f"`model(x)`. Received: input_tensor of type {type(input_tensor).__name__}"
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if len(tensor_shape) != 3:
            raise ValueError(
                "`input_tensor` must be a batch of images (batch, height, width, channels), "
                "or (batch, channels, height, width) for 'channels_first'. "
                f"Received: input_tensor.shape={input_tensor.shape}"
            )
        if input_shape is None:
            input_shape = tensor_shape
        elif len(tuple(input_shape)) != len(tensor_shape) or any(
            a is not None and b is not None and a != b
            for a, b in zip(tuple(input_shape), tensor_shape)
        ):
            raise ValueError(
                f"`{arg}` does not match the shape of `input_tensor`. "
                f"Received: {arg}={input_shape}, input_tensor.shape={input_tensor.shape}"
            )
    channels_first = data_format == "channels_first"
    if input_shape is None:
        side = DESIGN_RESOLUTION if include_top else None
        return (3, side, side) if channels_first else (side, side, 3)
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = ()
    layout = "(channels, height, width)" if channels_first else "(height, width, channels)"
    if len(dims) != 3 or not all(d is None or (_is_int(d) and d >= 0) for d in dims):
        raise ValueError(
            f"`{arg}` must be {layout} with int or None sizes (image data format "
            f"{data_format!r}). Received: {arg}={input_shape!r}"
        )
    dims = tuple(None if d is None else int(d) for d in dims)
    channels = dims[0] if channels_first else dims[-1]
    spatial = dims[1:] if channels_first else dims[:2]
    if channels is None or channels < 1:
        raise ValueError(
            f"{name} needs a known channel count, {layout} with image data format "
            f"{data_format!r}. Received: {arg}={input_shape!r}"
        )
    for axis, size in zip(("height", "width"), spatial):
        if size is not None and size < MIN_SIZE:
            raise ValueError(
                f"{name} needs an input {axis} of at least {MIN_SIZE} (the total stride), "
                f"or None. Received: {arg}={input_shape!r}"
            )
    return dims


def _normalization(channels):
    """(x / 255 - mean) / std as one per-channel affine map (channels-last)."""
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD)
        if channels == 3
        else (
            (OTHER_MEAN,) * channels,
            (OTHER_STD,) * channels,
        )
    )
    # Graph constants, not captured tensors, so every exporter (tf2onnx
    # included) sees them.
    return ChannelsLastRescaling(
        scale=[1.0 / (255.0 * s) for s in std],
        offset=[-m / s for m, s in zip(mean, std)],
        name="normalization",
    )


def patch_embedding(x, stage, channels, dtype=None):
    """Overlapping patch embedding of a stage, with PyTorch's symmetric padding.

    (B, H, W, C_in) -> (B, ceil(H / stride), ceil(W / stride), channels):
    kernel 7 stride 4 in stage 0, kernel 3 stride 2 after, then LayerNorm.
    `dtype`: the dtype policy of the layers (None: the global policy).
    """
    kernel, stride = (7, 4) if stage == 0 else (3, 2)
    prefix = f"stage{stage + 1}"
    x = layers.ZeroPadding2D(
        kernel // 2, data_format="channels_last", name=f"{prefix}_embed_pad", dtype=dtype
    )(x)
    x = layers.Conv2D(
        channels,
        kernel,
        strides=stride,
        data_format="channels_last",
        name=f"{prefix}_embed_conv",
        dtype=dtype,
    )(x)  # (B, ceil(H / stride), ceil(W / stride), C)
    return LayerNorm(epsilon=1e-5, name=f"{prefix}_embed_norm", dtype=dtype)(x)


def build_stages(x, depths, channels, make_block, stage_norm=False, dtype=None):
    """The four stages of a SepViT on a (B, H, W, C) tensor, for any block kind.

    Per stage: the patch embedding (`stageS_embed_*`), the blocks
    `make_block(stage, j, block_index)` named `stageS_blockJ` (`block_index`
    counts blocks over all stages), the position encoding after the first
    (`stageS_pos_encoding`), with `stage_norm` a LayerNorm (`stageS_norm`),
    and `stageS_output` (the map `feature_pyramid` reads). Returns the four
    stage outputs, (B, ceil(H / 4), ceil(W / 4), C1) ... (B, ceil(H / 32),
    ceil(W / 32), C4).
    """
    outputs = []
    block_index = 0
    for stage in range(len(depths)):
        prefix = f"stage{stage + 1}"
        # (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), C_stage)
        x = patch_embedding(x, stage, channels[stage], dtype=dtype)
        for j in range(depths[stage]):
            x = make_block(stage, j, block_index)(x)
            block_index += 1
            if j == 0:
                x = PositionEncoding(name=f"{prefix}_pos_encoding", dtype=dtype)(x)
        if stage_norm:
            x = LayerNorm(epsilon=1e-6, name=f"{prefix}_norm", dtype=dtype)(x)
        x = layers.Identity(name=f"{prefix}_output", dtype=dtype)(x)
        outputs.append(x)
    return outputs


def classifier_stages(
    x,
    depths,
    channels,
    num_heads,
    window_sizes,
    mlp_ratio,
    rates,
    attention=None,
    window_token="learnable",
    window_representation="token",
    dtype=None,
):
    """The four stages of the classifier on a (B, H, W, C) tensor (`build_stages`).

    Layers are named as the authors' `patch_embeds.S`, `blocks.S.J`,
    `pos_block.S`. `rates`: the drop path rate of every block, in order.
    """

    def make_block(stage, j, block_index):
        kind, grid = block_attention(stage, window_sizes[stage][j])
        if attention == "global":
            kind, grid = "global", None
        return SepViTBlock(
            num_heads[stage],
            window_size=window_sizes[stage][j],
            attention=kind,
            token_grid=grid,
            window_token=window_token,
            window_representation=window_representation,
            mlp_ratio=mlp_ratio,
            drop_path_rate=rates[block_index],
            name=f"stage{stage + 1}_block{j + 1}",
            dtype=dtype,
        )

    return build_stages(x, depths, channels, make_block, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_sepvit")
class SepViTModel(keras.Model):
    """The functional model that `SepViT` returns: a `keras.Model` whose
    `predict` refuses an array without a batch axis (naming the fix) and
    answers a batch of 0 images with an empty result."""

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        empty = _check_image_batch(self, x)
        if empty is not None:
            return empty
        return super().predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
        )


def _check_image_batch(model, x):
    """None for inputs `predict` handles; the empty result for 0 images."""
    shape = getattr(x, "shape", None)
    if shape is None or isinstance(x, (dict, list, tuple)) or len(model.inputs) != 1:
        return None
    shape = tuple(shape)
    expected = tuple(model.inputs[0].shape)
    if len(shape) != len(expected):
        fix = (
            "For one image, add the batch axis: `x[None]` (or `np.expand_dims(x, 0)`)."
            if len(shape) == len(expected) - 1
            else ""
        )
        raise ValueError(
            f"{model.name} takes a batch of images of shape {expected} (batch first). "
            f"Received: an array of shape {shape}. {fix}".rstrip()
        )
    if shape[0] == 0:
        outputs = model.compute_output_spec(keras.KerasTensor(shape, dtype=model.inputs[0].dtype))
        return keras.tree.map_structure(lambda s: np.zeros(s.shape, s.dtype), outputs)
    return None


def SepViT(
    depths,
    channels,
    num_heads,
    window_sizes,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    window_token="learnable",
    window_representation="token",
    mlp_ratio=4.0,
    attention=None,
    dense=False,
    name="sepvit",
):
    """Builds a SepViT from a per-stage configuration (see `MODEL_CONFIGS`).

    Args:
        depths: 4 ints. Blocks per stage.
        channels: 4 ints. Channels per stage.
        num_heads: 4 ints. Attention heads per stage (dividing the channels).
        window_sizes: 4 tuples, one window size per block of each stage.
        mlp_ratio: float. MLP expansion ratio. Defaults to 4.
        attention: None (the paper's per-block attention) or "global": every
            block attends over its whole map, a plain global-attention ViT of
            the same widths and depths (the quadratic baseline of the
            paper's complexity analysis; no window tokens, no PWA weights).
        dense: bool. Build the authors' detection/segmentation backbone
            (`keras_sepvit.dense`) instead of the classifier's stages: zero
            window tokens, padding unmasked, PSA in every block, a LayerNorm
            per stage. Needs `include_top=False`.
        Other arguments: as in `SepViTLite`.
    """
    if attention not in (None, "global"):
        raise ValueError(f'`attention` must be None or "global". Received: attention={attention!r}')
    if dense:
        from keras_sepvit.dense import check_dense_arguments

        check_dense_arguments(include_top, attention, window_token, window_representation)
    depths, channels, num_heads, window_sizes, drop_path_rate, mlp_ratio = _validate_config(
        depths, channels, num_heads, window_sizes, mlp_ratio, drop_path_rate
    )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if include_top:
        if not (_is_int(classes) and classes >= 1):
            raise ValueError(f"`classes` must be a positive int. Received: classes={classes!r}")
        classes = int(classes)
        try:
            classifier_activation = keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as err:
            raise ValueError(
                "`classifier_activation` must be None, an activation name such as "
                "'softmax', or a callable. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from err
    if weights is not None:
        weights = check_weights_path(weights)
    data_format = keras.config.image_data_format()
    input_shape = _validate_input_shape(input_shape, input_tensor, include_top, data_format, name)
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape, name="image")
    else:
        img_input = input_tensor

    x = img_input
    if data_format == "channels_first":
        x = layers.Permute((2, 3, 1), name="to_channels_last")(x)  # (B, C, H, W) -> (B, H, W, C)
    if include_preprocessing:
        x = _normalization(x.shape[-1])(x)

    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    if dense:
        # The authors' detection/segmentation backbone (keras_sepvit.dense).
        from keras_sepvit.dense import dense_stages

        x = dense_stages(x, depths, channels, num_heads, window_sizes, mlp_ratio, rates)[-1]
    else:
        x = classifier_stages(
            x,
            depths,
            channels,
            num_heads,
            window_sizes,
            mlp_ratio,
            rates,
            attention=attention,
            window_token=window_token,
            window_representation=window_representation,
        )[-1]

    if not dense:
        x = LayerNorm(epsilon=1e-6, name="norm")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
        # float32 head: logits/probabilities stay stable under mixed precision.
        x = layers.Dense(
            classes, activation=classifier_activation, name="predictions", dtype="float32"
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format="channels_last", name="max_pool")(x)
    elif data_format == "channels_first":
        x = layers.Permute((3, 1, 2), name="to_channels_first")(x)  # (B, H, W, C) -> (B, C, H, W)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = SepViTModel(inputs, x, name=name)
    if weights is not None:
        load_weights(model, weights)
    return model


def _variant(variant, **kwargs):
    """Builds a row of MODEL_CONFIGS; `drop_path_rate=None` keeps the row's default."""
    config = {"drop_path_rate": 0.0, **MODEL_CONFIGS[variant]}
    if kwargs.get("drop_path_rate") is None:
        kwargs.pop("drop_path_rate", None)
    return SepViT(**{**config, **kwargs})


def SepViTLite(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=None,
    window_token="learnable",
    window_representation="token",
    dense=False,
    name="sepvit_lite",
):
    return _variant("lite", **locals())


def SepViTTiny(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=None,
    window_token="learnable",
    window_representation="token",
    dense=False,
    name="sepvit_tiny",
):
    return _variant("tiny", **locals())


def SepViTSmall(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=None,
    window_token="learnable",
    window_representation="token",
    dense=False,
    name="sepvit_small",
):
    return _variant("small", **locals())


def SepViTBase(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=None,
    window_token="learnable",
    window_representation="token",
    dense=False,
    name="sepvit_base",
):
    return _variant("base", **locals())


VARIANTS = {
    "lite": SepViTLite,
    "tiny": SepViTTiny,
    "small": SepViTSmall,
    "base": SepViTBase,
}
for _fn in VARIANTS.values():
    _fn.__doc__ = BASE_DOCSTRING.format(name=_fn.__name__, fn=_fn.__name__)


def _data_format(data_format):
    data_format = keras.config.image_data_format() if data_format is None else data_format
    if data_format not in ("channels_first", "channels_last"):
        raise ValueError(
            "`data_format` must be None, 'channels_first' or 'channels_last'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


def preprocess_input(x, data_format=None):
    """A placeholder, as in `keras.applications.convnext`: returns `x` unchanged.

    SepViT models normalise inside (`include_preprocessing=True`), so they take
    pixel values in [0, 255] unchanged. For a model built with
    `include_preprocessing=False`, use `normalize_images` instead.

    Args:
        x: images (any array or tensor), returned as they are.
        data_format: None (`keras.config.image_data_format()`),
            "channels_first" or "channels_last". Checked, then unused.
    """
    _data_format(data_format)
    return x


def normalize_images(x, data_format=None):
    """[0, 255] pixels -> ImageNet mean/std normalised (what the authors' model takes).

    The same map as the model's `include_preprocessing=True`: RGB with the
    ImageNet statistics, other channel counts with the channel-averaged ones.
    """
    x = keras.ops.convert_to_tensor(x, "float32")
    channels_first = _data_format(data_format) == "channels_first"
    channels = x.shape[-3] if channels_first else x.shape[-1]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (OTHER_MEAN, OTHER_STD)
    shape = (-1, 1, 1) if channels_first else (-1,)
    # Backend tensors, not NumPy arrays: `torch_tensor - ndarray` fails.
    mean = keras.ops.convert_to_tensor(np.reshape(np.asarray(mean, "float32") * 255.0, shape))
    std = keras.ops.convert_to_tensor(np.reshape(np.asarray(std, "float32") * 255.0, shape))
    return (x - mean) / std


def _imagenet_class_index():
    text = resources.files("keras_sepvit").joinpath("resources/imagenet_class_index.json")
    index = json.loads(text.read_text(encoding="utf-8"))
    return [tuple(index[str(i)]) for i in range(len(index))]


def decode_predictions(preds, top=5, class_names=None):
    """Decodes a batch of predictions, as `keras.applications.*.decode_predictions`.

    Works offline: the ImageNet-1k class index ships with the package.

    Args:
        preds: array or tensor (samples, classes) of scores.
        top: int. How many top-scoring classes to return per sample.
            Defaults to 5.
        class_names: None for the 1000 ImageNet classes, or a list of class
            names (one per column of `preds`) for a model trained on other
            classes; their id is the column index as a string.

    Returns:
        A list with one list per sample of `(class_id, class_name, score)`
        tuples, best first.
    """
    preds = np.asarray(keras.ops.convert_to_numpy(preds))
    if class_names is None:
        entries = _imagenet_class_index()
    else:
        entries = [(str(i), str(name)) for i, name in enumerate(class_names)]
    if preds.ndim != 2 or preds.shape[1] != len(entries):
        hint = " (pass `class_names` for a model trained on other classes)"
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (a 2D array of shape "
            f"(samples, {len(entries)})){hint if class_names is None else ''}. "
            f"Received: an array of shape {preds.shape}"
        )
    if not (_is_int(top) and top >= 1):
        raise ValueError(f"`top` must be a positive int. Received: top={top!r}")
    results = []
    for pred in preds:
        best = np.argsort(-pred, kind="stable")[:top]
        results.append([entries[i] + (pred[i],) for i in best])
    return results


def feature_pyramid(backbone):
    """A multi-scale feature model from a SepViT (with or without top).

    Returns a `keras.Model` on the same inputs with a dict output
    `{"P2", "P3", "P4", "P5"}`: each stage's output map, strides 4, 8, 16, 32,
    channels as the variant's table, in the backbone's data format.
    """
    try:
        outputs = {
            f"P{stage + 2}": backbone.get_layer(f"stage{stage + 1}_output").output
            for stage in range(len(STAGE_STRIDES))
        }
    except ValueError as err:
        raise ValueError(
            "`feature_pyramid` needs a model built by keras_sepvit (layers "
            f"'stage1_output'..'stage4_output'). Received: model {backbone.name!r}"
        ) from err
    if any(layer.name == "to_channels_last" for layer in backbone.layers):
        outputs = {
            level: layers.Permute((3, 1, 2), name=f"{level}_channels_first")(x)  # -> (B, C, H, W)
            for level, x in outputs.items()
        }
    return keras.Model(backbone.input, outputs, name=f"{backbone.name}_pyramid")
