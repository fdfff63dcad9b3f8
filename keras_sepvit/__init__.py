"""keras_sepvit: SepViT (Separable Vision Transformer) for Keras 3."""

from keras_sepvit.convert import load_official_weights
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
    normalize_images,
    preprocess_input,
)

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
    "load_official_weights",
    "normalize_images",
    "preprocess_input",
]
