"""The SepViT model: a variant table, one generic builder, thin variants.

Reference: Li et al., "SepViT: Separable Vision Transformer",
https://arxiv.org/abs/2203.15380 (Table 1), and the authors' classification
code (github liwei109/SepViT), whose weights `load_official_weights` reads.
"""

import keras
import numpy as np
from keras import layers

from keras_sepvit.layers import LayerNorm, PositionEncoding, SepViTBlock

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

The model takes images of any height and width that are multiples of 32,
static or `None`. By default (`include_preprocessing=True`) it takes RGB
values in [0, 255] and normalises them with the ImageNet mean/std inside.

Args:
    include_top: bool. Whether to include the final LayerNorm-pool-Dense
        classifier. Defaults to True.
    weights: None or the path of a `.weights.h5` / `.keras` file to load
        (no downloads). For the authors' PyTorch weights use
        `keras_sepvit.load_official_weights`. Defaults to None.
    input_tensor: optional Keras tensor to use as the image input.
    input_shape: optional `(H, W, C)` tuple; H and W multiples of 32 or
        None. Defaults to `(224, 224, 3)`.
    pooling: None, "avg" or "max": pooling of the last feature map when
        `include_top=False`. Defaults to None (the 4-D map).
    classes: int. Number of classes when `include_top=True`. Defaults to 1000.
    classifier_activation: str or callable for the top layer, or None for
        logits. Defaults to "softmax".
    include_preprocessing: bool. Take [0, 255] RGB and normalise inside
        (True), or take normalised input like the authors' model (False).
        Defaults to True.
    drop_path_rate: float. Stochastic depth rate of the last block (linear
        rule over blocks). Defaults to the paper's value for the variant.
    window_token: "learnable" or "zero": window token embedding (Table 6).
        Defaults to "learnable".
    window_representation: "token", "avg_pool" or "dw_conv": how PWA
        summarises a window (Table 7). Defaults to "token".
    name: str. Model name.

Returns:
    A `keras.Model`.

Example:
>>> model = keras_sepvit.{fn}(weights=None)
>>> model.output_shape
(None, 1000)
"""


def _validate_input_shape(input_shape, include_preprocessing, name):
    if input_shape is None:
        return (DESIGN_RESOLUTION, DESIGN_RESOLUTION, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape}"
        )
    height, width, channels = input_shape
    if channels is None or channels < 1:
        raise ValueError(f"{name} needs a known channel count. Received: input_shape={input_shape}")
    if include_preprocessing and channels != 3:
        raise ValueError(
            f"{name} with `include_preprocessing=True` takes RGB images (3 channels). "
            f"Received: input_shape={input_shape}. Pass 3 channels, or "
            "`include_preprocessing=False` for other inputs."
        )
    for axis, size in (("height", height), ("width", width)):
        if size is not None and (size < TOTAL_STRIDE or size % TOTAL_STRIDE):
            raise ValueError(
                f"{name} needs an input {axis} that is a multiple of {TOTAL_STRIDE} "
                f"(the total stride), or None. Received: input_shape={input_shape}. "
                f"Resize or pad to e.g. {max(TOTAL_STRIDE, size // TOTAL_STRIDE * TOTAL_STRIDE)}."
            )
    return input_shape


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
    name="sepvit",
):
    """Builds a SepViT from a per-stage configuration (see `MODEL_CONFIGS`).

    Args:
        depths: 4 ints. Blocks per stage.
        channels: 4 ints. Channels per stage.
        num_heads: 4 ints. Attention heads per stage.
        window_sizes: 4 tuples, one window size per block of each stage.
        mlp_ratio: float. MLP expansion ratio. Defaults to 4.
        attention: None (the paper's per-block attention) or "global": every
            block attends over its whole map, a plain global-attention ViT of
            the same widths and depths (the quadratic baseline of the
            paper's complexity analysis; no window tokens, no PWA weights).
        Other arguments: as in `SepViTLite`.
    """
    if attention not in (None, "global"):
        raise ValueError(f'`attention` must be None or "global". Received: attention={attention!r}')
    stage_args = {"depths": depths, "channels": channels, "num_heads": num_heads}
    for arg, value in stage_args.items():
        if len(value) != len(STAGE_STRIDES):
            raise ValueError(f"`{arg}` needs 4 entries, one per stage. Received: {arg}={value}")
    for stage, (depth, sizes) in enumerate(zip(depths, window_sizes)):
        if len(sizes) != depth:
            raise ValueError(
                f"Stage {stage + 1} has {depth} blocks but {len(sizes)} window sizes. "
                f"Received: window_sizes={window_sizes}"
            )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"`classes` must be a positive int. Received: classes={classes}")
    if weights is not None:
        _check_weights_path(weights)
    classifier_activation = keras.activations.get(classifier_activation)

    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = _validate_input_shape(input_shape, include_preprocessing, name)
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape, name="image")
    elif not keras.utils.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape, name="image")
    else:
        img_input = input_tensor

    x = img_input
    if include_preprocessing:
        # (x / 255 - mean) / std as one per-channel affine map: graph constants,
        # not captured tensors, so every exporter (tf2onnx included) sees them.
        x = layers.Rescaling(
            scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
            offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
            name="normalization",
        )(x)

    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    block_index = 0
    for stage in range(len(depths)):
        # Overlapping patch embedding with PyTorch's symmetric padding.
        kernel, stride = (7, 4) if stage == 0 else (3, 2)
        prefix = f"stage{stage + 1}"
        x = layers.ZeroPadding2D(kernel // 2, name=f"{prefix}_embed_pad")(x)
        x = layers.Conv2D(channels[stage], kernel, strides=stride, name=f"{prefix}_embed_conv")(
            x
        )  # (B, H / stride, W / stride, C)
        x = LayerNorm(epsilon=1e-5, name=f"{prefix}_embed_norm")(x)
        for j in range(depths[stage]):
            kind, grid = block_attention(stage, window_sizes[stage][j])
            if attention == "global":
                kind, grid = "global", None
            x = SepViTBlock(
                num_heads[stage],
                window_size=window_sizes[stage][j],
                attention=kind,
                token_grid=grid,
                window_token=window_token,
                window_representation=window_representation,
                mlp_ratio=mlp_ratio,
                drop_path_rate=rates[block_index],
                name=f"{prefix}_block{j + 1}",
            )(x)
            block_index += 1
            if j == 0:
                x = PositionEncoding(name=f"{prefix}_pos_encoding")(x)
        x = layers.Identity(name=f"{prefix}_output")(x)

    x = LayerNorm(epsilon=1e-6, name="norm")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        # float32 head: logits/probabilities stay stable under mixed precision.
        x = layers.Dense(
            classes, activation=classifier_activation, name="predictions", dtype="float32"
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        _load_weights(model, weights)
    return model


def _check_weights_path(weights):
    import os

    weights = os.fspath(weights)
    if not weights.endswith((".weights.h5", ".keras")):
        raise ValueError(
            "`weights` must be None or the path of a `.weights.h5` or `.keras` file "
            "(there are no downloads; for the authors' PyTorch weights use "
            f"`keras_sepvit.load_official_weights`). Received: weights={weights!r}"
        )
    if not os.path.exists(weights):
        raise FileNotFoundError(f"Weights file not found. Received: weights={weights!r}")


def _load_weights(model, path):
    import warnings

    path = str(path)
    try:
        if path.endswith(".keras"):
            source = keras.saving.load_model(path, compile=False)
            mismatched = [
                (a.path, a.shape, b.shape)
                for a, b in zip(model.weights, source.weights)
                if tuple(a.shape) != tuple(b.shape)
            ]
            if len(model.weights) != len(source.weights) or mismatched:
                raise ValueError(
                    f"{len(source.weights)} weights in the file, {len(model.weights)} in the "
                    f"model; first shape mismatches (name, model, file): {mismatched[:3]}"
                )
            model.set_weights(source.get_weights())
        else:
            # Keras only warns when parts of a file do not match; a partial
            # load must not pass silently, so those warnings become an error.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(path)
            skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
            if skipped:
                raise ValueError(f"{len(skipped)} parts did not match, first: {skipped[0]}")
    except ValueError as err:
        raise ValueError(
            f"The weights in {path!r} do not fit {model.name} (another variant, "
            f"classes or ablation setting?): {err}"
        ) from err


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


def preprocess_input(x, data_format=None):  # noqa: ARG001
    """A placeholder, as in `keras.applications.convnext`.

    SepViT models normalise inside (`include_preprocessing=True`), so they take
    RGB values in [0, 255] unchanged. For a model built with
    `include_preprocessing=False`, use `normalize_images` instead.
    """
    return x


def normalize_images(x):
    """[0, 255] RGB -> ImageNet mean/std normalised (what the authors' model takes)."""
    mean = np.asarray(IMAGENET_MEAN, "float32") * 255.0
    std = np.asarray(IMAGENET_STD, "float32") * 255.0
    return (keras.ops.convert_to_tensor(x, "float32") - mean) / std


def feature_pyramid(backbone):
    """A multi-scale feature model from a SepViT (with or without top).

    Returns a `keras.Model` on the same inputs with a dict output
    `{"P2", "P3", "P4", "P5"}`: each stage's output map, strides 4, 8, 16, 32,
    channels as the variant's table.
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
    return keras.Model(backbone.input, outputs, name=f"{backbone.name}_pyramid")
