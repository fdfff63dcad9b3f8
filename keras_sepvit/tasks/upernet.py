"""UperNet: the paper's second ADE20K segmentation head (Sec. 4.3, Table 5).

Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018
(https://arxiv.org/abs/1807.10221), as mmsegmentation's `UPerHead` +
`FCNHead` (auxiliary) run it for SepViT / Swin / Twins on ADE20K:

1. Pyramid pooling (`PyramidPoolingModule`, PSPNet's PPM) on P5: adaptive
   average pooling to s x s for s in (1, 2, 3, 6), a 1x1 conv - BN - ReLU
   each, bilinearly resized back (half-pixel centres, PyTorch's
   `align_corners=False`) and concatenated after P5 itself; a 3x3 conv - BN -
   ReLU bottleneck makes P5's map.
2. `UperNetHead`: 1x1 conv - BN - ReLU laterals on P2..P4, a top-down path
   (each coarser map upsampled bilinearly and added to the next finer one),
   a 3x3 conv - BN - ReLU on every level but the top, every level upsampled
   to P2, concatenated, a 3x3 conv - BN - ReLU `fpn_bottleneck`, channel
   dropout 0.1 (`nn.Dropout2d`), a 1x1 classifier; 512 channels.
3. `AuxiliaryFCNHead`: mmseg's auxiliary `FCNHead` on stage 3 (P4): one 3x3
   conv - BN - ReLU (256 channels), dropout 0.1, a 1x1 classifier. It runs in
   training only; `UperNetSegmenter.compute_loss` adds its loss times 0.4.
   At inference (`predict`, exported files) it is not computed.

Sizes. Adaptive pooling and the PPM's resize are written as small linear
maps (PyTorch's `AdaptiveAvgPool2d` bins `[floor(i H / s), ceil((i + 1) H /
s))` and bilinear weights): NumPy constants when the map's size is static,
the same matrices built with `keras.ops` when it is not (a TensorFlow graph
traced with `None` height and width), so any input size works on every
backend. The top-down path and the fusion upsample by powers of two and crop
at the bottom/right as `semantic_fpn` does (a dense SepViT pads there); for
sizes that are multiples of 32, as mmseg's 512x512 crops, that equals
mmseg's resize to the finer map's size.
"""

import threading

import keras
import numpy as np
from keras import layers, ops

from keras_sepvit.layers import PACKAGE
from keras_sepvit.optimizer_build import OptimizerBuiltBeforeFit
from keras_sepvit.preprocessing import resolve_data_format
from keras_sepvit.tasks.layout import INSIDE, shape_inside, to_inside, to_outside, with_channels
from keras_sepvit.tasks.segmentation_losses import mean_iou, segmentation_loss
from keras_sepvit.tasks.semantic_fpn import (
    LEVELS,
    UpsampleLike,
    _check_features,
    _check_levels,
    _crop,
    _image_segmenter,
    _spatial,
    _upsample,
    pyramid_model,
)

POOL_SCALES = (1, 2, 3, 6)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def _check_dropout(dropout):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")


def _check_pool_scales(pool_scales):
    scales = tuple(pool_scales) if isinstance(pool_scales, (list, tuple)) else ()
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(
            f"`pool_scales` must be positive ints such as (1, 2, 3, 6). "
            f"Received: pool_scales={pool_scales!r}"
        )
    return scales


def pool_matrix(size, bins, dtype="float32"):
    """(bins, size): row i averages `[floor(i size / bins), ceil((i + 1) size / bins))`.

    PyTorch's `AdaptiveAvgPool2d` along one axis. `size` is an int (a NumPy
    matrix) or a scalar tensor (the same matrix from `keras.ops`).
    """
    if isinstance(size, int):
        matrix = np.zeros((bins, size), "float64")
        for i in range(bins):
            start, end = (i * size) // bins, -(-(i + 1) * size // bins)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix.astype(dtype)
    i = ops.arange(bins, dtype="int32")[:, None]
    size = ops.cast(size, "int32")
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    position = ops.arange(size, dtype="int32")[None, :]
    inside = ops.cast(ops.logical_and(position >= start, position < end), dtype)
    return inside / ops.cast(end - start, dtype)  # (bins, size)


def resize_matrix(in_size, out_size, dtype="float32"):
    """(out_size, in_size): bilinear weights, half-pixel centres, edges clamped.

    PyTorch's `interpolate(mode="bilinear", align_corners=False)` (and
    `tf.image.resize`) along one axis. Sizes are ints (NumPy) or scalar
    tensors (`keras.ops`).
    """
    if isinstance(in_size, int) and isinstance(out_size, int):
        source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype("int64"), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        weight = source - low
        matrix = np.zeros((out_size, in_size), "float64")
        np.add.at(matrix, (np.arange(out_size), low), 1.0 - weight)
        np.add.at(matrix, (np.arange(out_size), high), weight)
        return matrix.astype(dtype)
    in_float = ops.cast(in_size, "float32")
    out = ops.cast(ops.arange(out_size), "float32")
    source = ops.maximum((out + 0.5) * in_float / ops.cast(out_size, "float32") - 0.5, 0.0)
    low = ops.minimum(ops.floor(source), in_float - 1.0)
    high = ops.minimum(low + 1.0, in_float - 1.0)
    weight = (source - low)[:, None]
    columns = ops.cast(ops.arange(in_size), "float32")[None, :]
    matrix = (1.0 - weight) * ops.cast(ops.equal(columns, low[:, None]), "float32")
    matrix = matrix + weight * ops.cast(ops.equal(columns, high[:, None]), "float32")
    return ops.cast(matrix, dtype)  # (out_size, in_size)


def _apply_along_axes(x, rows, columns, data_format):
    """`rows` (r, H) and `columns` (c, W) applied to x's H and W axes."""
    rows = ops.cast(rows, x.dtype)
    columns = ops.cast(columns, x.dtype)
    if data_format == "channels_last":
        x = ops.einsum("ih,bhwc->biwc", rows, x)  # (B, r, W, C)
        return ops.einsum("jw,biwc->bijc", columns, x)  # (B, r, c, C)
    x = ops.einsum("ih,bchw->bciw", rows, x)  # (B, C, r, W)
    return ops.einsum("jw,bciw->bcij", columns, x)  # (B, C, r, c)


def adaptive_average_pool(x, output_size, data_format=None):
    """`x` (B, H, W, C) averaged over `output_size` x `output_size` bins: (B, s, s, C).

    Equals PyTorch's `nn.AdaptiveAvgPool2d(output_size)` (overlapping bins
    when H or W is not a multiple of the size), for any H, W >= 1, static or
    not (see the module docstring). Channels first under
    `data_format="channels_first"`.
    """
    data_format = resolve_data_format(data_format)
    height, width = _spatial(x, data_format)
    rows = pool_matrix(height, output_size)  # (s, H)
    columns = pool_matrix(width, output_size)  # (s, W)
    return _apply_along_axes(x, rows, columns, data_format)


def resize_bilinear(x, size, data_format=None):
    """`x` resized to `size` = (height, width), bilinear, half-pixel centres.

    As PyTorch's `F.interpolate(x, size, mode="bilinear",
    align_corners=False)`; sizes static or not.
    """
    data_format = resolve_data_format(data_format)
    height, width = _spatial(x, data_format)
    rows = resize_matrix(height, size[0])  # (H', H)
    columns = resize_matrix(width, size[1])  # (W', W)
    return _apply_along_axes(x, rows, columns, data_format)


def _conv_norm(channels, kernel_size, name):
    """An mmseg `ConvModule` (conv without bias, BatchNorm; ReLU in `_run`), channels-last
    (the heads run channels-last inside, keras_sepvit.tasks.layout)."""
    conv = layers.Conv2D(
        channels,
        kernel_size,
        padding="same",
        use_bias=False,
        data_format=INSIDE,
        name=f"{name}_conv",
    )
    norm = layers.BatchNormalization(axis=-1, momentum=0.9, epsilon=1e-5, name=f"{name}_bn")
    return conv, norm


def _build(module, shape):
    conv, norm = module
    conv.build(shape)
    shape = conv.compute_output_shape(shape)
    norm.build(shape)
    return shape


def _run(module, x, training):
    conv, norm = module
    return ops.relu(norm(conv(x), training=training))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PyramidPoolingModule(layers.Layer):
    """PSPNet's pyramid pooling, as mmseg's `PPM` and `UPerHead.psp_forward`.

    `(B, H, W, C) -> (B, H, W, channels)`: `x` and, for each pool scale s,
    adaptive average pooling to s x s, 1x1 conv - BN - ReLU and a bilinear
    resize back to H x W, concatenated (`x` first), then the 3x3 conv - BN -
    ReLU bottleneck.

    Args:
        channels: int. Channels of every branch and of the output. Defaults
            to 512.
        pool_scales: tuple of int. Output sizes of the adaptive pooling.
            Defaults to (1, 2, 3, 6).
        data_format: "channels_last" or "channels_first". Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(self, channels=512, pool_scales=POOL_SCALES, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _positive_int("channels", channels)
        self.channels = channels
        self.pool_scales = _check_pool_scales(pool_scales)
        self.data_format = resolve_data_format(data_format)
        # Convolutions run channels-last inside (keras_sepvit.tasks.layout).
        self.branches = [_conv_norm(channels, 1, f"pool{s}") for s in self.pool_scales]
        self.bottleneck = _conv_norm(channels, 3, "bottleneck")

    def build(self, input_shape):
        input_shape = shape_inside(input_shape, self.data_format)  # (B, H, W, C)
        for branch in self.branches:
            _build(branch, input_shape)
        total = input_shape[-1] + len(self.pool_scales) * self.channels
        _build(self.bottleneck, with_channels(input_shape, total, INSIDE))

    def call(self, inputs, training=None):
        inputs = to_inside(inputs, self.data_format)  # (B, H, W, C)
        size = _spatial(inputs, INSIDE)
        outputs = [inputs]
        for scale, branch in zip(self.pool_scales, self.branches):
            x = adaptive_average_pool(inputs, scale, INSIDE)  # (B, s, s, C)
            x = _run(branch, x, training)  # (B, s, s, channels)
            outputs.append(resize_bilinear(x, size, INSIDE))  # (B, H, W, channels)
        x = ops.concatenate(outputs, axis=-1)  # (B, H, W, C + n * channels)
        return to_outside(_run(self.bottleneck, x, training), self.data_format)

    def compute_output_shape(self, input_shape):
        return with_channels(input_shape, self.channels, self.data_format)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "pool_scales": list(self.pool_scales),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class UperNetHead(layers.Layer):
    """mmseg's `UPerHead`: PPM on the top level, FPN, fusion, classifier.

    `{"P2": (B, h2, w2, C2), ..., "P5": ...} -> (B, h2, w2, num_classes)`:
    logits at the finest level's resolution (stride 4 for P2).

    Args:
        num_classes: int. Output classes (background included if it is one).
        channels: int. Channels of the laterals, FPN and fusion. Defaults to 512.
        pool_scales: tuple of int. The PPM's pooling sizes. Defaults to
            (1, 2, 3, 6).
        dropout: float. Channel dropout before the classifier (mmseg's
            `Dropout2d`). Defaults to 0.1.
        levels: tuple of str. Pyramid keys, finest first. Defaults to
            ("P2", "P3", "P4", "P5").
        data_format: "channels_last" or "channels_first". Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(
        self,
        num_classes,
        channels=512,
        pool_scales=POOL_SCALES,
        dropout=0.1,
        levels=LEVELS,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _positive_int("num_classes", num_classes)
        _positive_int("channels", channels)
        _check_dropout(dropout)
        self.num_classes = num_classes
        self.channels = channels
        self.pool_scales = _check_pool_scales(pool_scales)
        self.dropout = dropout
        self.levels = _check_levels(levels)
        self.data_format = resolve_data_format(data_format)
        # Everything runs channels-last inside (keras_sepvit.tasks.layout).
        self.ppm = PyramidPoolingModule(channels, self.pool_scales, INSIDE, name="ppm")
        upper = self.levels[:-1]
        self.laterals = {k: _conv_norm(channels, 1, f"lateral_{k}") for k in upper}
        self.fpn_convs = {k: _conv_norm(channels, 3, f"fpn_{k}") for k in upper}
        self.fpn_bottleneck = _conv_norm(channels, 3, "fpn_bottleneck")
        self.drop = layers.SpatialDropout2D(dropout, data_format=INSIDE, name="dropout")
        self.classifier = layers.Conv2D(num_classes, 1, data_format=INSIDE, name="classifier")

    def build(self, input_shape):
        _check_features(input_shape, self.levels, "UperNetHead")
        input_shape = shape_inside(input_shape, self.data_format)  # {level: (B, h, w, C)}
        self.ppm.build(input_shape[self.levels[-1]])
        for k in self.levels[:-1]:
            shape = _build(self.laterals[k], input_shape[k])
            _build(self.fpn_convs[k], shape)
        finest = input_shape[self.levels[0]]
        fused = len(self.levels) * self.channels
        shape = _build(self.fpn_bottleneck, with_channels(finest, fused, INSIDE))
        self.classifier.build(shape)

    def call(self, inputs, training=None):
        _check_features(inputs, self.levels, "UperNetHead")
        inputs = to_inside(inputs, self.data_format)  # {level: (B, h, w, C)}
        maps = {k: _run(self.laterals[k], inputs[k], training) for k in self.levels[:-1]}
        maps[self.levels[-1]] = self.ppm(inputs[self.levels[-1]], training=training)
        for finer, coarser in zip(self.levels[-2::-1], self.levels[:0:-1]):
            factor = 2 ** (int(coarser[1:]) - int(finer[1:]))
            upsampled = _upsample(maps[coarser], factor, "bilinear", INSIDE)
            # top-down: the coarser map upsampled and cropped to the finer one (ceil sizes)
            maps[finer] = maps[finer] + _crop(upsampled, _spatial(maps[finer], INSIDE), INSIDE)
        outputs = {k: _run(self.fpn_convs[k], maps[k], training) for k in self.levels[:-1]}
        outputs[self.levels[-1]] = maps[self.levels[-1]]
        finest = self.levels[0]
        size = _spatial(outputs[finest], INSIDE)
        fused = []
        for k in self.levels:
            factor = 2 ** (int(k[1:]) - int(finest[1:]))
            x = _upsample(outputs[k], factor, "bilinear", INSIDE)
            fused.append(_crop(x, size, INSIDE))  # (B, h2, w2, channels)
        x = ops.concatenate(fused, axis=-1)  # (B, h2, w2, levels * channels)
        x = _run(self.fpn_bottleneck, x, training)
        x = self.drop(x, training=training)
        logits = self.classifier(x)  # (B, h2, w2, num_classes)
        return to_outside(logits, self.data_format)

    def compute_output_shape(self, input_shape):
        finest = input_shape[self.levels[0]]
        return with_channels(finest, self.num_classes, self.data_format)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "pool_scales": list(self.pool_scales),
            "dropout": self.dropout,
            "levels": list(self.levels),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class AuxiliaryFCNHead(layers.Layer):
    """mmseg's auxiliary `FCNHead` (one 3x3 conv - BN - ReLU), run in training only.

    Called on `[outputs, features, reference]` it returns `outputs`
    unchanged: the segmenter's graph passes its logits through it. When
    called with `training=True` it also computes its own logits from
    `features` (stage 3), upsampled `factor` times and cropped to
    `reference`'s size (the image), and keeps them for
    `UperNetSegmenter.compute_loss` (`take_logits`), per thread (as
    replicas of a `tf.distribute` strategy trace in threads). At inference
    nothing of it runs; `logits` computes them directly.

    Args:
        num_classes: int. Output classes.
        channels: int. Channels of the conv. Defaults to 256.
        dropout: float. Channel dropout before the classifier. Defaults to 0.1.
        factor: int. Stride of `features` (upsampling to the image). Defaults to 16.
        activation: None (logits) or "softmax", as the segmenter's output.
            Defaults to None.
        data_format: "channels_last" or "channels_first". Defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(
        self,
        num_classes,
        channels=256,
        dropout=0.1,
        factor=16,
        activation=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _positive_int("num_classes", num_classes)
        _positive_int("channels", channels)
        _positive_int("factor", factor)
        _check_dropout(dropout)
        if activation not in (None, "softmax"):
            raise ValueError(
                "`activation` must be None (logits) or 'softmax'. "
                f"Received: activation={activation!r}"
            )
        self.num_classes = num_classes
        self.channels = channels
        self.dropout = dropout
        self.factor = factor
        self.activation = activation
        self.data_format = resolve_data_format(data_format)
        # Everything runs channels-last inside (keras_sepvit.tasks.layout).
        self.conv = _conv_norm(channels, 3, "conv")
        self.drop = layers.SpatialDropout2D(dropout, data_format=INSIDE, name="dropout")
        self.classifier = layers.Conv2D(num_classes, 1, data_format=INSIDE, name="classifier")
        self.upsample = UpsampleLike(factor, data_format=INSIDE, name="upsample")
        self._kept = threading.local()

    def build(self, input_shape):
        shape = _build(self.conv, shape_inside(input_shape[1], self.data_format))
        self.classifier.build(shape)

    def logits(self, features, reference, training=None):
        """`features` (B, h, w, C) -> (B, H, W, num_classes) at `reference`'s size."""
        features, reference = to_inside([features, reference], self.data_format)
        x = _run(self.conv, features, training)
        x = self.classifier(self.drop(x, training=training))  # (B, h, w, num_classes)
        x = self.upsample([x, reference])  # (B, H, W, num_classes)
        if self.activation == "softmax":
            x = ops.softmax(ops.cast(x, "float32"), axis=-1)
        return to_outside(x, self.data_format)

    def take_logits(self):
        """The logits of this thread's last training call, once (then None)."""
        logits = getattr(self._kept, "logits", None)
        self._kept.logits = None
        return logits

    def call(self, inputs, training=None):
        outputs, features, reference = inputs
        self._kept.logits = self.logits(features, reference, training) if training else None
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "dropout": self.dropout,
            "factor": self.factor,
            "activation": self.activation,
            "data_format": self.data_format,
        }


def _single_loss(loss):
    """A callable `(y_true, y_pred, sample_weight)` for the auxiliary head, or None."""
    if loss is None:
        return None
    if isinstance(loss, str):
        return keras.losses.get(loss)
    if callable(loss):
        return loss
    raise ValueError(
        "UperNetSegmenter's auxiliary head needs one loss for its single output "
        f"(or auxiliary_loss_weight=0). Received: loss={loss!r}"
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class UperNetSegmenter(OptimizerBuiltBeforeFit, _image_segmenter()):
    """UperNet on a feature-pyramid backbone (the paper's ADE20K UperNet setting).

    `images (B, H, W, 3) -> logits (B, H, W, num_classes)` (or
    probabilities with `activation="softmax"`). A keras-hub
    `ImageSegmenter`. In training the auxiliary FCN head on stage 3 adds
    `auxiliary_loss_weight` times its loss (same loss, same labels) to the
    total (`compute_loss`); `evaluate` and `predict` see the main logits only.
    `compile()` defaults to the paper's UperNet recipe (AdamW, learning rate
    6e-5, weight decay 0.01: T/S; the paper uses 0.03 for B), per-pixel sparse
    cross-entropy and `keras.metrics.MeanIoU`, both ignoring label 255.
    Paper: https://arxiv.org/abs/2203.15380 (Sec. 4.2); head: Xiao et al.
    2018 (see the module docstring).

    Args:
        backbone: a keras-hub `FeaturePyramidBackbone` with P2..P5 (e.g.
            `keras_sepvit.hub.SepViTBackbone`, `keras_hub.models.MiTBackbone`)
            or a functional model with a dict output
            (`keras_sepvit.feature_pyramid(...)`).
        num_classes: int. Classes of the per-pixel classifier.
        channels: int. Channels of the UperNet head. Defaults to 512.
        pool_scales: tuple of int. The PPM's pooling sizes. Defaults to
            (1, 2, 3, 6).
        auxiliary_loss_weight: float. Weight of the auxiliary head's loss;
            0 builds no auxiliary head. Defaults to 0.4.
        auxiliary_channels: int. Channels of the auxiliary head. Defaults to 256.
        dropout: float. Channel dropout before both classifiers. Defaults to 0.1.
        activation: None (logits) or "softmax". Defaults to None.
        pyramid_keys: None or 4 keys of the backbone's pyramid for strides
            4, 8, 16, 32. Defaults to None (`semantic_fpn.default_pyramid_keys`).
        preprocessor: a keras-hub preprocessor or None. Defaults to None.

    Example:
    ```python
    import numpy as np
    from keras_sepvit.hub import SepViTBackbone
    from keras_sepvit.tasks.upernet import UperNetSegmenter

    segmenter = UperNetSegmenter(SepViTBackbone.from_preset("sepvit_lite_dense"), 150)
    logits = segmenter.predict(np.zeros((1, 64, 96, 3)))  # (1, 64, 96, 150)
    ```
    """

    backbone_cls = None

    def __init__(
        self,
        backbone,
        num_classes,
        channels=512,
        pool_scales=POOL_SCALES,
        auxiliary_loss_weight=0.4,
        auxiliary_channels=256,
        dropout=0.1,
        activation=None,
        pyramid_keys=None,
        preprocessor=None,
        **kwargs,
    ):
        if activation not in (None, "softmax"):
            raise ValueError(
                "`activation` must be None (logits) or 'softmax'. "
                f"Received: activation={activation!r}"
            )
        if isinstance(auxiliary_loss_weight, bool) or not (
            isinstance(auxiliary_loss_weight, (int, float)) and auxiliary_loss_weight >= 0
        ):
            raise ValueError(
                "`auxiliary_loss_weight` must be a number >= 0 (0: no auxiliary head). "
                f"Received: auxiliary_loss_weight={auxiliary_loss_weight!r}"
            )
        compile_now = kwargs.pop("compile", True)
        data_format = getattr(backbone, "data_format", None)
        features = pyramid_model(backbone, pyramid_keys)
        inputs = backbone.inputs[0]
        pyramid = features(inputs)
        x = UperNetHead(
            num_classes,
            channels=channels,
            pool_scales=pool_scales,
            dropout=dropout,
            data_format=data_format,
            name="upernet_head",
        )(pyramid)  # (B, H / 4, W / 4, num_classes)
        if auxiliary_loss_weight:
            x = AuxiliaryFCNHead(
                num_classes,
                channels=auxiliary_channels,
                dropout=dropout,
                factor=2 ** int(LEVELS[2][1:]),
                activation=activation,
                data_format=data_format,
                name="auxiliary_head",
            )([x, pyramid[LEVELS[2]], inputs])  # x unchanged; training: stage-3 logits kept
        stride = 2 ** int(LEVELS[0][1:])
        x = UpsampleLike(stride, data_format=data_format, name="logits")([x, inputs])
        if activation == "softmax":
            axis = -1 if resolve_data_format(data_format) == "channels_last" else 1
            x = layers.Softmax(axis=axis, dtype="float32", name="probabilities")(x)
        super().__init__(inputs=inputs, outputs=x, compile=False, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.num_classes = num_classes
        self.channels = channels
        self.pool_scales = _check_pool_scales(pool_scales)
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.auxiliary_channels = auxiliary_channels
        self.dropout = dropout
        self.activation = activation
        self.pyramid_keys = None if pyramid_keys is None else list(pyramid_keys)
        self._auxiliary_loss = None
        if compile_now:
            self.compile()

    @property
    def auxiliary_head(self):
        """The `AuxiliaryFCNHead` layer, or None with `auxiliary_loss_weight=0`."""
        if not self.auxiliary_loss_weight:
            return None
        return self.get_layer("auxiliary_head")

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", ignore_class=255, **kwargs):
        """`ImageSegmenter.compile` with the UperNet defaults.

        Args:
            optimizer: "auto" (AdamW, learning rate 6e-5, weight decay 0.01,
                the paper's UperNet setting for T/S) or an optimizer.
            loss: "auto" (`segmentation_loss`) or one loss (the auxiliary
                head uses it too).
            metrics: "auto" (`mean_iou`) or a list of metrics.
            ignore_class: int or None. Label left out of the "auto" loss and
                metric. Defaults to 255.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=6e-5, weight_decay=0.01)
        if loss == "auto":
            if self.activation == "softmax":
                loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=ignore_class)
            else:
                loss = segmentation_loss(ignore_class)
        if metrics == "auto":
            metrics = [mean_iou(self.num_classes, ignore_class)]
        self._auxiliary_loss = _single_loss(loss) if self.auxiliary_loss_weight else None
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # The saved optimizer, loss and metrics, through `compile` above.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss, plus `auxiliary_loss_weight` x the auxiliary loss in training."""
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        head = self.auxiliary_head
        auxiliary = head.take_logits() if head is not None else None
        if not training or auxiliary is None or loss is None or self._auxiliary_loss is None:
            return loss
        extra = self._auxiliary_loss(y, auxiliary, sample_weight)
        return loss + ops.cast(self.auxiliary_loss_weight * extra, loss.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "pool_scales": list(self.pool_scales),
            "auxiliary_loss_weight": self.auxiliary_loss_weight,
            "auxiliary_channels": self.auxiliary_channels,
            "dropout": self.dropout,
            "activation": self.activation,
            "pyramid_keys": self.pyramid_keys,
        }
