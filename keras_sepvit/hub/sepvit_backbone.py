"""SepViT as a keras-hub `FeaturePyramidBackbone` (detection and segmentation).

Reference: Li et al., "SepViT: Separable Vision Transformer",
https://arxiv.org/abs/2203.15380 (Sec. 4.2-4.3 use the dense backbone of the
authors' `detection/sepvit.py`; `keras_sepvit.dense` describes it).
"""

import keras
import numpy as np
from keras import layers
from keras_hub.models import FeaturePyramidBackbone

from keras_sepvit.dense import dense_stages
from keras_sepvit.preprocessing import resolve_data_format
from keras_sepvit.stages import classifier_stages
from keras_sepvit.validation import validate_config, validate_input_shape

PACKAGE = "keras_sepvit"


@keras.saving.register_keras_serializable(package=PACKAGE)
class SepViTBackbone(FeaturePyramidBackbone):
    """SepViT backbone with a P2..P5 feature pyramid, for keras-hub tasks.

    Reference: [SepViT: Separable Vision Transformer](https://arxiv.org/abs/2203.15380)
    (Li et al., 2022). With `dense=True` (the default) this is the authors'
    detection/segmentation backbone (`detection/sepvit.py`, number for number:
    `keras_sepvit.load_official_weights(backbone, "dense.pth")`): every block
    pads its map to its window, unmasked, with a zero window token; PSA runs
    in every block; a LayerNorm per stage gives each stage's output. With
    `dense=False` it is the classifier's four stages (learnable window
    tokens, masked padding; `load_official_weights` reads a classifier state
    dict and skips its final `norm` and `head`).

    The backbone takes images normalised with the ImageNet mean and std
    (`SepViTImageConverter` does that from [0, 255] pixels), of any height and
    width of at least 32 (`None` sizes by default); the stage maps have sides
    `ceil(size / stride)`, strides 4, 8, 16, 32. `pyramid_outputs` is
    `{"P2", "P3", "P4", "P5"}` (the normed stage outputs with `dense=True`, the
    raw stage outputs with `dense=False`); the model's output is P5. Layer
    names are those of `keras_sepvit.SepViT*(include_top=False)`, so
    `keras_sepvit.feature_pyramid`, `keras_sepvit.load_official_weights` and
    `keras_sepvit.load_classifier_weights` work on it.

    Presets (`SepViTBackbone.presets`) are architecture configs only: the
    authors published no weights, so `from_preset("sepvit_lite_dense")` builds
    a randomly initialised backbone without any download.

    Args:
        depths: 4 ints. Blocks per stage.
        channels: 4 ints. Hidden dims (channels) per stage.
        num_heads: 4 ints. Attention heads per stage (dividing the channels).
        window_sizes: 4 tuples, one window size per block of each stage
            (7 for DSSA, 14 for GSA in the paper's variants).
        mlp_ratio: float. MLP hidden width / channels. Defaults to 4.0.
        drop_path_rate: float in [0, 1). Stochastic depth rate of the last
            block (linear over blocks). Defaults to 0.0.
        dense: bool. The authors' dense backbone (True) or the classifier's
            stages (False). Defaults to True.
        image_shape: None or a tuple `(height, width, channels)`
            (`(channels, height, width)` for "channels_first"); sizes None
            or at least 32. Defaults to None: `(None, None, 3)`, or
            `(3, None, None)` for "channels_first".
        data_format: None, "channels_last" or "channels_first": the layout
            of the input and of every output (the layers work channels-last;
            channels-first is transposed once at the input and at each
            output). Defaults to None: `keras.config.image_data_format()`.
        dtype: None, a dtype name or a `keras.DTypePolicy` ("float32",
            "bfloat16", "mixed_float16", ...) for every layer. LayerNorms
            and softmaxes compute in float32 internally. Defaults to None
            (the global policy).

    Example:
    >>> backbone = SepViTBackbone(
    ...     depths=(1, 1, 1, 1),
    ...     channels=(8, 16, 16, 32),
    ...     num_heads=(1, 1, 2, 2),
    ...     window_sizes=((7,), (7,), (7,), (7,)),
    ... )
    >>> pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    >>> features = pyramid(np.zeros((1, 64, 96, 3), "float32"))
    >>> {level: tuple(f.shape) for level, f in features.items()}
    {'P2': (1, 16, 24, 8), 'P3': (1, 8, 12, 16), 'P4': (1, 4, 6, 16), 'P5': (1, 2, 3, 32)}
    """

    def __init__(
        self,
        depths,
        channels,
        num_heads,
        window_sizes,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        dense=True,
        image_shape=None,
        data_format=None,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(dense, bool):
            raise ValueError(f"`dense` must be True or False. Received: dense={dense!r}")
        depths, channels, num_heads, window_sizes, drop_path_rate, mlp_ratio = validate_config(
            depths, channels, num_heads, window_sizes, mlp_ratio, drop_path_rate
        )
        data_format = resolve_data_format(data_format)
        image_shape = validate_input_shape(
            image_shape, None, False, data_format, "SepViTBackbone", arg="image_shape"
        )
        channels_first = data_format == "channels_first"

        # === Functional Model ===
        image_input = keras.Input(shape=image_shape, name="images")
        x = image_input
        if channels_first:
            # (B, C, H, W) -> (B, H, W, C)
            x = layers.Permute((2, 3, 1), name="to_channels_last", dtype=dtype)(x)
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        if dense:
            stage_outputs = dense_stages(
                x, depths, channels, num_heads, window_sizes, mlp_ratio, rates, dtype=dtype
            )
        else:
            stage_outputs = classifier_stages(
                x, depths, channels, num_heads, window_sizes, mlp_ratio, rates, dtype=dtype
            )
        pyramid_outputs = {}
        for stage, output in enumerate(stage_outputs):
            level = f"P{stage + 2}"
            if channels_first:
                # (B, H, W, C) -> (B, C, H, W)
                output = layers.Permute((3, 1, 2), name=f"{level}_to_channels_first", dtype=dtype)(
                    output
                )
            pyramid_outputs[level] = output
        super().__init__(inputs=image_input, outputs=pyramid_outputs["P5"], dtype=dtype, **kwargs)

        # === Config ===
        self.depths = depths
        self.channels = channels
        self.num_heads = num_heads
        self.window_sizes = window_sizes
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.dense = dense
        self.image_shape = image_shape
        self.data_format = data_format
        self.pyramid_outputs = pyramid_outputs

    @classmethod
    def from_preset(cls, preset, load_weights=None, **kwargs):
        """Builds a `SepViTBackbone` from a preset name or a preset folder.

        The built-in presets (`SepViTBackbone.presets`: "sepvit_lite_dense",
        "sepvit_lite", ... "sepvit_base") are architecture configs only (the
        authors published no weights): they build a randomly initialised
        backbone, with no download. A folder written by `save_to_preset`
        loads its weights.

        Args:
            preset: str. A built-in preset name, or a local preset folder
                (or any handle keras-hub's `Backbone.from_preset` takes).
            load_weights: None, True or False. Load the preset's weights.
                Defaults to None: False for the built-in presets, True
                otherwise. True for a built-in preset is refused.
            **kwargs: passed to the constructor, e.g. `dtype`,
                `image_shape`.
        """
        entry = cls.presets.get(preset) if isinstance(preset, str) else None
        config_only = entry is not None and entry["metadata"].get("config_only", False)
        if load_weights is None:
            load_weights = not config_only
        elif load_weights and config_only:
            raise ValueError(
                f"The preset {preset!r} is an architecture config without weights (the "
                "authors published none): pass `load_weights=False` (random init), or "
                "`save_to_preset` a trained backbone and load that folder. "
                f"Received: load_weights={load_weights!r}"
            )
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def compute_output_spec(self, inputs, training=None, mask=None):
        # Keras runs a functional model's layers on the input specs; an array
        # given here (NumPy, a backend tensor) becomes its spec first, since
        # layers with a `compute_output_shape` (the stem's padding) need one.
        def spec(x):
            if isinstance(x, keras.KerasTensor):
                return x
            return keras.KerasTensor(tuple(x.shape), dtype=keras.backend.standardize_dtype(x.dtype))

        inputs = keras.tree.map_structure(spec, inputs)
        return super().compute_output_spec(inputs, training=training, mask=mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depths": self.depths,
                "channels": self.channels,
                "num_heads": self.num_heads,
                "window_sizes": self.window_sizes,
                "mlp_ratio": self.mlp_ratio,
                "drop_path_rate": self.drop_path_rate,
                "dense": self.dense,
                "image_shape": self.image_shape,
                "data_format": self.data_format,
            }
        )
        return config
