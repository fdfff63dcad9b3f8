"""Semantic FPN: the segmentation head of the paper's ADE20K results (Sec. 4.3).

Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019
(https://arxiv.org/abs/1901.02446), as mmsegmentation's `FPN` neck +
`FPNHead` run it for SepViT / PVT / Twins on ADE20K:

1. FPN on P2..P5 (`FPNNeck`): a 1x1 lateral convolution per level, a
   top-down pathway (each coarser map resized, nearest, to the next finer
   one and added), then a 3x3 convolution per level; 256 channels.
2. The semantic head (`SemanticFPNHead`): level Pn goes through
   max(1, n - 2) stages of 3x3 conv - norm - ReLU, each but P2's followed
   by a 2x bilinear upsampling, so every level reaches stride 4 with 128
   channels; the four maps are summed, dropout 0.1, a 1x1 classifier.
3. `SemanticFPNSegmenter` upsamples the stride-4 logits 4x (bilinear) and
   crops them to the input (`UpsampleLike`): `model(images)` is
   `(B, H, W, classes)`.

keras-hub has no Semantic FPN; the layers here use `keras.ops` only and run
on every backend. Any input size works: a dense SepViT gives maps of
ceil(size / stride), so an upsampled map can be one row or column larger
than the finer one; it is cropped at the bottom/right, where the backbone
padded. (mmsegmentation resizes instead; for sizes that are multiples of 32,
as its 512x512 crops, the two are the same.)
"""

import keras
from keras import layers, ops

from keras_sepvit.layers import PACKAGE
from keras_sepvit.optimizer_build import OptimizerBuiltBeforeFit
from keras_sepvit.preprocessing import resolve_data_format
from keras_sepvit.tasks.layout import INSIDE, shape_inside, to_inside, to_outside, with_channels
from keras_sepvit.tasks.segmentation_losses import mean_iou, segmentation_loss  # also re-exported

LEVELS = ("P2", "P3", "P4", "P5")
NORMS = ("group", "batch")


def _spatial(x, data_format):
    """(height, width) of a map: ints where static, scalar tensors where not."""
    shape = ops.shape(x)
    return (shape[1], shape[2]) if data_format == "channels_last" else (shape[2], shape[3])


def _is_static(*sizes):
    return all(isinstance(s, int) for s in sizes)


def _upsample_axis(x, factor, axis, interpolation):
    """`x` upsampled `factor` times along `axis`, half-pixel centres, edges clamped.

    The dynamic-size path of `_upsample` (`ops.image.resize` needs a static
    size): equals `ops.image.resize` to float rounding (see the tests).
    """
    if interpolation == "nearest":
        return ops.repeat(x, factor, axis=axis)
    size = ops.shape(x)[axis]
    index = [slice(None)] * len(x.shape)

    def part(start, stop):
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    previous = ops.concatenate([part(0, 1), part(0, -1)], axis=axis)  # x[max(i - 1, 0)]
    following = ops.concatenate([part(1, None), part(-1, None)], axis=axis)  # x[min(i + 1, n - 1)]
    phases = []
    for k in range(factor):
        offset = (k + 0.5) / factor - 0.5  # where output k of each input pixel samples, in pixels
        neighbour = previous if offset < 0 else following
        phases.append((1.0 - abs(offset)) * x + abs(offset) * neighbour)
    y = ops.stack(phases, axis=axis + 1)  # (..., n, factor, ...)
    shape = list(ops.shape(x))
    shape[axis] = size * factor
    return ops.reshape(y, shape)  # (..., n * factor, ...)


def _upsample(x, factor, interpolation, data_format):
    """`x` upsampled `factor` times (nearest or bilinear with half-pixel centres).

    Nearest is always `ops.repeat` (TFLite TILE, ONNX Tile; ONNX Runtime
    warns about tf2onnx's Resize attribute for a nearest `tf.image.resize`).
    """
    if factor == 1:
        return x
    height, width = _spatial(x, data_format)
    if interpolation == "bilinear" and _is_static(height, width):
        size = (factor * height, factor * width)
        return ops.image.resize(
            x, size, interpolation=interpolation, antialias=False, data_format=data_format
        )
    axes = (1, 2) if data_format == "channels_last" else (2, 3)
    for axis in axes:
        x = _upsample_axis(x, factor, axis, interpolation)
    return x


def _crop(x, size, data_format):
    """The top-left `size` = (height, width) of `x` (a no-op when it is that size)."""
    height, width = _spatial(x, data_format)
    if _is_static(height, width, *size) and (height, width) == tuple(size):
        return x
    if data_format == "channels_last":
        return x[:, : size[0], : size[1], :]
    return x[:, :, : size[0], : size[1]]


def _check_levels(levels):
    levels = tuple(levels)
    if not levels or any(
        not (isinstance(k, str) and k[:1] == "P" and k[1:].isdigit()) for k in levels
    ):
        raise ValueError(
            f"`levels` must be pyramid keys such as ('P2', 'P3', 'P4', 'P5'). Received: {levels}"
        )
    strides = [int(k[1:]) for k in levels]
    if strides != sorted(set(strides)):
        raise ValueError(
            f"`levels` must be distinct and ordered finest first. Received: levels={levels}"
        )
    return levels


def _check_features(features, levels, name):
    if not isinstance(features, dict) or any(k not in features for k in levels):
        keys = sorted(features) if isinstance(features, dict) else type(features).__name__
        raise ValueError(f"{name} needs a dict with keys {list(levels)}. Received: {keys}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class FPNNeck(layers.Layer):
    """Feature Pyramid Network (Lin et al. 2017): lateral 1x1, top-down, 3x3.

    `{"P2": (B, H/4, W/4, C2), ..., "P5": (B, H/32, W/32, C5)} ->` the same
    keys, each `(B, h, w, channels)` (channels first under
    `data_format="channels_first"`).

    Args:
        channels: int. Output channels of every level. Defaults to 256.
        levels: tuple of str. Pyramid keys, finest first. Defaults to
            ("P2", "P3", "P4", "P5").
        data_format: "channels_last" or "channels_first". Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(self, channels=256, levels=LEVELS, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be a positive int. Received: channels={channels!r}")
        self.channels = channels
        self.levels = _check_levels(levels)
        self.data_format = resolve_data_format(data_format)
        conv = dict(data_format=INSIDE)  # channels-last inside (keras_sepvit.tasks.layout)
        self.lateral = {
            k: layers.Conv2D(channels, 1, name=f"lateral_{k}", **conv) for k in self.levels
        }
        self.output_convs = {
            k: layers.Conv2D(channels, 3, padding="same", name=f"output_{k}", **conv)
            for k in self.levels
        }

    def build(self, input_shape):
        _check_features(input_shape, self.levels, "FPNNeck")
        input_shape = shape_inside(input_shape, self.data_format)  # {level: (B, h, w, C)}
        for k in self.levels:
            self.lateral[k].build(input_shape[k])
            self.output_convs[k].build(self.lateral[k].compute_output_shape(input_shape[k]))

    def call(self, inputs):
        _check_features(inputs, self.levels, "FPNNeck")
        inputs = to_inside(inputs, self.data_format)  # {level: (B, h, w, C)}
        maps = {k: self.lateral[k](inputs[k]) for k in self.levels}
        for finer, coarser in zip(self.levels[-2::-1], self.levels[:0:-1]):
            factor = 2 ** (int(coarser[1:]) - int(finer[1:]))
            upsampled = _upsample(maps[coarser], factor, "nearest", INSIDE)
            # top-down: the coarser map, nearest-upsampled and cropped to the finer one
            maps[finer] = maps[finer] + _crop(upsampled, _spatial(maps[finer], INSIDE), INSIDE)
        outputs = {k: self.output_convs[k](maps[k]) for k in self.levels}
        return to_outside(outputs, self.data_format)

    def compute_output_shape(self, input_shape):
        shapes = {k: input_shape[k] for k in self.levels}
        return {k: with_channels(v, self.channels, self.data_format) for k, v in shapes.items()}

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "levels": list(self.levels),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SemanticFPNHead(layers.Layer):
    """The Semantic FPN head: every level to stride 4, summed, classified.

    `{"P2": (B, h2, w2, C), ..., "P5": ...} -> (B, h2, w2, num_classes)`:
    logits at the finest level's resolution (stride 4 for P2).

    Args:
        num_classes: int. Output classes (background included if it is one).
        channels: int. Channels of the upsampling stages. Defaults to 128.
        norm: "group" (GroupNorm, as Kirillov et al.) or "batch"
            (mmsegmentation's SyncBN setting). Defaults to "group".
        groups: int. GroupNorm groups; must divide `channels`. Defaults to 32.
        dropout: float. Dropout before the classifier. Defaults to 0.1.
        levels: tuple of str. Pyramid keys, finest first. Defaults to
            ("P2", "P3", "P4", "P5").
        data_format: "channels_last" or "channels_first". Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(
        self,
        num_classes,
        channels=128,
        norm="group",
        groups=32,
        dropout=0.1,
        levels=LEVELS,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("num_classes", num_classes), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        if norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={norm!r}")
        if norm == "group" and (not isinstance(groups, int) or groups < 1 or channels % groups):
            raise ValueError(
                "`groups` must be a positive int dividing `channels`. "
                f"Received: groups={groups!r}, channels={channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        self.num_classes = num_classes
        self.channels = channels
        self.norm = norm
        self.groups = groups
        self.dropout = dropout
        self.levels = _check_levels(levels)
        self.data_format = resolve_data_format(data_format)
        axis = -1  # channels-last inside (keras_sepvit.tasks.layout)
        finest = int(self.levels[0][1:])
        self.stages = {}
        for k in self.levels:
            stages = []
            for i in range(max(1, int(k[1:]) - finest)):
                conv = layers.Conv2D(
                    channels,
                    3,
                    padding="same",
                    use_bias=False,
                    data_format=INSIDE,
                    name=f"{k}_conv{i + 1}",
                )
                if norm == "group":
                    normalization = layers.GroupNormalization(
                        groups, axis=axis, epsilon=1e-5, name=f"{k}_norm{i + 1}"
                    )
                else:
                    normalization = layers.BatchNormalization(
                        axis=axis, momentum=0.9, epsilon=1e-5, name=f"{k}_norm{i + 1}"
                    )
                stages.append((conv, normalization))
            self.stages[k] = stages
        self.drop = layers.Dropout(dropout, name="dropout")
        self.classifier = layers.Conv2D(num_classes, 1, data_format=INSIDE, name="classifier")

    def build(self, input_shape):
        _check_features(input_shape, self.levels, "SemanticFPNHead")
        input_shape = shape_inside(input_shape, self.data_format)  # {level: (B, h, w, C)}
        for k in self.levels:
            shape = input_shape[k]
            for conv, normalization in self.stages[k]:
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
                normalization.build(shape)
        self.classifier.build(shape)

    def call(self, inputs, training=None):
        _check_features(inputs, self.levels, "SemanticFPNHead")
        inputs = to_inside(inputs, self.data_format)  # {level: (B, h, w, C)}
        size = _spatial(inputs[self.levels[0]], INSIDE)
        output = None
        for k in self.levels:
            x = inputs[k]
            stages = self.stages[k]
            for conv, normalization in stages:
                x = ops.relu(normalization(conv(x), training=training))
                if k != self.levels[0]:
                    x = _upsample(x, 2, "bilinear", INSIDE)
            x = _crop(x, size, INSIDE)  # ceil sizes: 2 * ceil(h / 2) may be h + 1
            output = x if output is None else output + x  # (B, h2, w2, channels)
        output = self.drop(output, training=training)
        return to_outside(self.classifier(output), self.data_format)  # (B, h2, w2, num_classes)

    def compute_output_shape(self, input_shape):
        return with_channels(input_shape[self.levels[0]], self.num_classes, self.data_format)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "norm": self.norm,
            "groups": self.groups,
            "dropout": self.dropout,
            "levels": list(self.levels),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class UpsampleLike(layers.Layer):
    """Upsamples a map `factor` times and crops it to a reference's size.

    `[(B, h, w, C), (B, H, W, C')] -> (B, H, W, C)`, H <= factor * h: e.g.
    stride-4 logits to the image. A dense SepViT's stride-4 map has
    ceil(H / 4) rows, row i seeing pixels 4i..4i+3 (the image is padded at
    the bottom/right), so upsampling by the stride and cropping keeps every
    pixel aligned where resizing ceil(H / 4) rows to H would not.

    Args:
        factor: int. Upsampling factor (the map's stride). Defaults to 4.
        interpolation: "bilinear" or "nearest". Defaults to "bilinear"
            (half-pixel centres, as PyTorch's `align_corners=False`).
        data_format: "channels_last" or "channels_first". Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(self, factor=4, interpolation="bilinear", data_format=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"`factor` must be a positive int. Received: factor={factor!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(
                "`interpolation` must be 'bilinear' or 'nearest'. "
                f"Received: interpolation={interpolation!r}"
            )
        self.factor = factor
        self.interpolation = interpolation
        self.data_format = resolve_data_format(data_format)

    def call(self, inputs):
        x, reference = inputs
        x = _upsample(x, self.factor, self.interpolation, self.data_format)
        return _crop(x, _spatial(reference, self.data_format), self.data_format)

    def compute_output_shape(self, input_shape):
        shape, reference = (list(s) for s in input_shape)
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for axis in axes:
            shape[axis] = reference[axis]
        return tuple(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "factor": self.factor,
            "interpolation": self.interpolation,
            "data_format": self.data_format,
        }


def default_pyramid_keys(backbone):
    """The backbone's pyramid keys for strides 4, 8, 16, 32.

    ("P2", "P3", "P4", "P5") for SepViT and keras-hub's convention; keras-hub's
    `MiTBackbone` names its stride-4..32 maps "P1".."P4".
    """
    outputs = getattr(backbone, "pyramid_outputs", None) or {}
    if type(backbone).__name__ == "MiTBackbone" and "P5" not in outputs:
        return ("P1", "P2", "P3", "P4")
    return LEVELS


def pyramid_model(backbone, pyramid_keys=None):
    """A `keras.Model` from the backbone's input to `{"P2": stride 4, ..., "P5": stride 32}`.

    Takes a keras-hub `FeaturePyramidBackbone` (`pyramid_outputs`, e.g.
    `keras_sepvit.hub.SepViTBackbone` or `keras_hub.models.MiTBackbone`) or a
    functional model whose output is such a dict (`keras_sepvit.feature_pyramid`).
    `pyramid_keys` names the backbone's stride-4..32 maps (default:
    `default_pyramid_keys`); they are renamed P2..P5.
    """
    outputs = getattr(backbone, "pyramid_outputs", None)
    if not outputs and isinstance(getattr(backbone, "output", None), dict):
        outputs = backbone.output
    if not isinstance(backbone, keras.Model) or not outputs:
        raise ValueError(
            "The backbone must be a keras_hub FeaturePyramidBackbone (with `pyramid_outputs`) "
            "or a functional model with a dict output such as keras_sepvit.feature_pyramid(). "
            f"Received: {type(backbone).__name__}"
        )
    keys = tuple(pyramid_keys) if pyramid_keys else default_pyramid_keys(backbone)
    missing = [k for k in keys if k not in outputs]
    if len(keys) != len(LEVELS) or missing:
        raise ValueError(
            f"`pyramid_keys` must name 4 maps of the backbone (strides 4, 8, 16, 32). "
            f"Received: pyramid_keys={keys}; the backbone has {sorted(outputs)}"
        )
    renamed = {level: outputs[k] for level, k in zip(LEVELS, keys)}
    return keras.Model(backbone.inputs, renamed, name="pyramid")


def _image_segmenter():
    from keras_hub.models import ImageSegmenter

    return ImageSegmenter


@keras.saving.register_keras_serializable(package=PACKAGE)
class SemanticFPNSegmenter(OptimizerBuiltBeforeFit, _image_segmenter()):
    """Semantic FPN on a feature-pyramid backbone (the paper's ADE20K setting).

    `images (B, H, W, 3) -> logits (B, H, W, num_classes)` (or
    probabilities with `activation="softmax"`). A keras-hub `ImageSegmenter`:
    `compile()` defaults to the paper's Semantic FPN recipe (AdamW, learning
    rate and weight decay 1e-4), per-pixel sparse cross-entropy and
    `keras.metrics.MeanIoU`, both ignoring label 255 (ADE20K's "other").
    Paper: https://arxiv.org/abs/2203.15380 (Sec. 4.2); head: Kirillov et
    al. 2019 (see the module docstring).

    Args:
        backbone: a keras-hub `FeaturePyramidBackbone` with P2..P5 (e.g.
            `keras_sepvit.hub.SepViTBackbone`, `keras_hub.models.MiTBackbone`)
            or a functional model with a dict output
            (`keras_sepvit.feature_pyramid(SepViTLite(include_top=False,
            dense=True, input_shape=(None, None, 3)))`).
        num_classes: int. Classes of the per-pixel classifier.
        fpn_channels: int. FPN channels. Defaults to 256.
        head_channels: int. Channels of the head's stages. Defaults to 128.
        norm: "group" or "batch": the head's normalisation. Defaults to "group".
        groups: int. GroupNorm groups. Defaults to 32.
        dropout: float. Dropout before the classifier. Defaults to 0.1.
        activation: None (logits) or "softmax". Defaults to None.
        pyramid_keys: None or 4 keys of the backbone's pyramid for strides
            4, 8, 16, 32. Defaults to None (`default_pyramid_keys`).
        preprocessor: a keras-hub preprocessor or None (inputs are given
            as the backbone expects them). Defaults to None.

    Example:
    ```python
    import numpy as np
    import keras_sepvit
    from keras_sepvit.tasks.semantic_fpn import SemanticFPNSegmenter

    backbone = keras_sepvit.feature_pyramid(
        keras_sepvit.SepViTLite(include_top=False, dense=True, input_shape=(None, None, 3))
    )
    segmenter = SemanticFPNSegmenter(backbone, num_classes=150)
    logits = segmenter.predict(np.zeros((1, 64, 96, 3)))  # (1, 64, 96, 150)
    ```
    """

    backbone_cls = None

    def __init__(
        self,
        backbone,
        num_classes,
        fpn_channels=256,
        head_channels=128,
        norm="group",
        groups=32,
        dropout=0.1,
        activation=None,
        pyramid_keys=None,
        preprocessor=None,
        **kwargs,
    ):
        if activation not in (None, "softmax"):
            raise ValueError(
                f"`activation` must be None (logits) or 'softmax'. Received: {activation!r}"
            )
        compile_now = kwargs.pop("compile", True)
        data_format = getattr(backbone, "data_format", None)
        features = pyramid_model(backbone, pyramid_keys)
        inputs = backbone.inputs[0]
        x = FPNNeck(fpn_channels, data_format=data_format, name="fpn")(features(inputs))
        x = SemanticFPNHead(
            num_classes,
            channels=head_channels,
            norm=norm,
            groups=groups,
            dropout=dropout,
            data_format=data_format,
            name="semantic_fpn_head",
        )(x)  # (B, H / 4, W / 4, num_classes)
        stride = 2 ** int(LEVELS[0][1:])
        x = UpsampleLike(stride, data_format=data_format, name="logits")(
            [x, inputs]
        )  # (B, H, W, classes)
        if activation == "softmax":
            axis = -1 if resolve_data_format(data_format) == "channels_last" else 1
            x = layers.Softmax(axis=axis, dtype="float32", name="probabilities")(x)
        super().__init__(inputs=inputs, outputs=x, compile=False, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.num_classes = num_classes
        self.fpn_channels = fpn_channels
        self.head_channels = head_channels
        self.norm = norm
        self.groups = groups
        self.dropout = dropout
        self.activation = activation
        self.pyramid_keys = None if pyramid_keys is None else list(pyramid_keys)
        if compile_now:
            self.compile()

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", ignore_class=255, **kwargs):
        """`ImageSegmenter.compile` with the Semantic FPN defaults.

        Args:
            optimizer: "auto" (AdamW, learning rate 1e-4, weight decay 1e-4,
                the paper's Semantic FPN setting) or an optimizer.
            loss: "auto" (`segmentation_loss`) or a loss.
            metrics: "auto" (`mean_iou`) or a list of metrics.
            ignore_class: int or None. Label left out of the "auto" loss and
                metric. Defaults to 255.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-4)
        if loss == "auto":
            if self.activation == "softmax":
                loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=ignore_class)
            else:
                loss = segmentation_loss(ignore_class)
        if metrics == "auto":
            metrics = [mean_iou(self.num_classes, ignore_class)]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # The saved optimizer, loss and metrics, through `compile` above
        # (Keras' own version skips models with a custom `compile`).
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "fpn_channels": self.fpn_channels,
            "head_channels": self.head_channels,
            "norm": self.norm,
            "groups": self.groups,
            "dropout": self.dropout,
            "activation": self.activation,
            "pyramid_keys": self.pyramid_keys,
        }
