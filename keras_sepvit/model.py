"""The SepViT model in keras.applications' order: the variant table, the shared
docstring, helpers, one generic builder, thin variants, then
`preprocess_input` / `decode_predictions` and `feature_pyramid`.

The stage loop lives in `keras_sepvit.stages`, argument checks in
`keras_sepvit.validation`, input normalisation in
`keras_sepvit.preprocessing`; their names that this module had before 0.2
(`STAGE_STRIDES`, `build_stages`, `IMAGENET_MEAN`, `normalize_images`, ...)
are still importable from here.

Reference: Li et al., "SepViT: Separable Vision Transformer",
https://arxiv.org/abs/2203.15380 (Table 1), and the authors' classification
code (github liwei109/SepViT), whose weights `load_official_weights` reads.
"""

import json
from importlib import resources

import keras
import numpy as np
from keras import layers

from keras_sepvit.dense import dense_stages
from keras_sepvit.layers import ChannelsLastRescaling, LayerNorm
from keras_sepvit.preprocessing import (  # noqa: F401 (re-exported: pre-0.2 paths)
    IMAGENET_MEAN,
    IMAGENET_STD,
    OTHER_MEAN,
    OTHER_STD,
    normalization_affine,
    normalize_images,
    preprocess_input,
    resolve_data_format,
)
from keras_sepvit.stages import (  # noqa: F401 (re-exported: pre-0.2 paths)
    DESIGN_RESOLUTION,
    MIN_SIZE,
    STAGE_STRIDES,
    TOTAL_STRIDE,
    block_attention,
    build_stages,
    classifier_stages,
    patch_embedding,
)
from keras_sepvit.validation import (
    check_dense_arguments,
    is_int,
    validate_attention,
    validate_config,
    validate_input_shape,
    validate_pooling,
    validate_top,
)
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


def _normalization(channels):
    """(x / 255 - mean) / std as one per-channel affine map (channels-last)."""
    scale, offset = normalization_affine(channels)
    # Graph constants, not captured tensors, so every exporter (tf2onnx
    # included) sees them.
    return ChannelsLastRescaling(scale=scale, offset=offset, name="normalization")


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
    validate_attention(attention)
    if dense:
        check_dense_arguments(include_top, attention, window_token, window_representation)
    depths, channels, num_heads, window_sizes, drop_path_rate, mlp_ratio = validate_config(
        depths, channels, num_heads, window_sizes, mlp_ratio, drop_path_rate
    )
    validate_pooling(pooling)
    if include_top:
        classes, classifier_activation = validate_top(classes, classifier_activation)
    if weights is not None:
        weights = check_weights_path(weights)
    data_format = keras.config.image_data_format()
    input_shape = validate_input_shape(input_shape, input_tensor, include_top, data_format, name)
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
    if not (is_int(top) and top >= 1):
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
