"""keras_sepvit: SepViT (Separable Vision Transformer) for Keras 3."""

from keras_sepvit import dense
from keras_sepvit.convert import (
    format_transfer_report,
    load_classifier_weights,
    load_official_weights,
)
from keras_sepvit.layers import (
    DropPath,
    GroupedSelfAttention,
    LayerNorm,
    PositionEncoding,
    SeparableSelfAttention,
    SepViTBlock,
    WindowMerge,
    WindowPartition,
    WindowTokens,
)
from keras_sepvit.model import (
    MODEL_CONFIGS,
    SepViT,
    SepViTBase,
    SepViTLite,
    SepViTSmall,
    SepViTTiny,
    decode_predictions,
    feature_pyramid,
)
from keras_sepvit.preprocessing import normalize_images, preprocess_input

# The pre-0.2 path `from keras_sepvit.dense import load_classifier_weights`
# (the README showed it): the function lives in `convert` (it reads the
# authors' names), above `dense` in the stack, so it is set here rather than
# imported upward by `dense`.
dense.load_classifier_weights = load_classifier_weights
dense.format_transfer_report = format_transfer_report

__version__ = "0.1.0"

__all__ = [
    "MODEL_CONFIGS",
    "DropPath",
    "GroupedSelfAttention",
    "LayerNorm",
    "PositionEncoding",
    "SepViT",
    "SepViTBase",
    "SepViTBlock",
    "SepViTLite",
    "SepViTSmall",
    "SepViTTiny",
    "SeparableSelfAttention",
    "WindowMerge",
    "WindowPartition",
    "WindowTokens",
    "decode_predictions",
    "feature_pyramid",
    "format_transfer_report",
    "load_classifier_weights",
    "load_official_weights",
    "normalize_images",
    "preprocess_input",
]
