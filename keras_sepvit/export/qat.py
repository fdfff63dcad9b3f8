"""Quantization-aware training (QAT) for SepViT, TensorFlow backend.

tensorflow-model-optimization (tfmot) 0.8 only wraps tf_keras (Keras 2)
models: `tfmot.quantization.keras.quantize_model` raises ValueError on a
Keras 3 model. Its QAT is, underneath, fake-quantization ops in the forward
pass (`tf.quantization.fake_quant_with_min_max_vars[_per_channel]`, with a
straight-through gradient) whose ranges the TFLite converter turns into int8
scales. This module inserts those same ops into a Keras 3 SepViT:

- weights of every Dense / Conv2D / DepthwiseConv2D: 8-bit, symmetric,
  narrow range, ranges taken from the current weights (tfmot's
  `LastValueQuantizer`): per output channel for convolutions, per tensor for
  Dense kernels, as tfmot's default 8-bit scheme does;
- inputs and outputs of those layers: 8-bit, asymmetric, per tensor, ranges kept as
  moving averages by tfmot's own `quant_ops.MovingAvgQuantize` (tfmot's
  `MovingAverageQuantizer`), started from ranges measured on calibration
  images rather than tfmot's fixed [-6, 6].

The model definition is not copied: `quantize_model` rebuilds the model from
its own config while `keras_sepvit.layers.SUBLAYER_CLASSES` points at the
fake-quantized subclasses below, then copies the weights over. Train the
result with `model.fit` as usual and convert it with
`keras_sepvit.export.to_tflite(qat_model, path, quantization="int8",
representative_data=...)`: the converter uses the trained ranges where the
fake-quant ops sit and calibrates the remaining tensors (LayerNorm, softmax,
residual adds) from the representative data.

Importing tfmot sets `TF_USE_LEGACY_KERAS=1` for the whole process; this
module imports only its `quant_ops` and restores the variable.
"""

import contextlib
import os

import keras
import numpy as np
from keras import ops

from keras_sepvit import layers as sepvit_layers

__all__ = [
    "PACKAGE",
    "RANGE_NAMES",
    "QuantizedConv2D",
    "QuantizedDense",
    "QuantizedDepthwiseConv2D",
    "calibrate",
    "float_weights",
    "quantize_model",
    "quantizers",
]

PACKAGE = "keras_sepvit.qat"
RANGE_NAMES = ("input_min", "input_max", "output_min", "output_max")
_EPSILON = 1e-6


def _quant_ops():
    """tfmot's quantization primitives, imported without changing the environment."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    except ImportError as error:
        raise ImportError(
            "Quantization-aware training needs tensorflow-model-optimization and "
            "tf-keras: pip install 'keras-sepvit[export]'"
        ) from error
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return quant_ops


def _check_backend():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "Quantization-aware training runs on the TensorFlow backend (its fake-quant "
            "ops are TensorFlow ops, read by the TFLite converter). Set "
            f"KERAS_BACKEND=tensorflow. Received: backend={keras.backend.backend()!r}"
        )


def _fake_quant_weight(kernel, per_channel=True, depthwise=False):
    """Symmetric narrow-range 8-bit fake quantization of a kernel.

    Per output channel (the last axis; axis 2 of a depthwise kernel) or, with
    `per_channel=False`, per tensor. Ranges come from the current kernel and
    carry no gradient, as in tfmot's `LastValueQuantizer`.
    """
    import tensorflow as tf

    if not per_channel:
        bound = tf.maximum(tf.stop_gradient(tf.reduce_max(tf.abs(kernel))), _EPSILON)
        return tf.quantization.fake_quant_with_min_max_vars(
            kernel, -bound, bound, num_bits=8, narrow_range=True
        )
    shape = kernel.shape
    if depthwise:  # (kh, kw, C, 1): channels are axis 2
        kernel = tf.reshape(kernel, tuple(shape[:3]))
    reduce_axes = list(range(len(kernel.shape) - 1))
    bound = tf.stop_gradient(tf.reduce_max(tf.abs(kernel), axis=reduce_axes))
    bound = tf.maximum(bound, _EPSILON)
    kernel = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        kernel, -bound, bound, num_bits=8, narrow_range=True
    )
    return tf.reshape(kernel, shape) if depthwise else kernel


class _ActivationQuantizer:
    """Moving-average ranges of a layer's input and output, and their fake quantization.

    The input range covers what feeds the matrix product (LayerNorm, GELU and
    attention outputs), the output range what leaves it. Subclasses give the
    product with the fake-quantized kernel (`_product`); bias, activation and
    both fake quantizations are shared here.
    """

    ema_decay = 0.999

    def build(self, input_shape):
        super().build(input_shape)
        for name in RANGE_NAMES:
            setattr(
                self,
                name,
                self.add_weight(name=name, shape=(), initializer="zeros", trainable=False),
            )
        self.calibrating = False

    def call(self, inputs, training=None):
        outputs = self._product(self._fake_quant(inputs, "input", training))
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return self._fake_quant(outputs, "output", training)

    def _fake_quant(self, x, which, training):
        import tensorflow as tf

        low, high = getattr(self, f"{which}_min"), getattr(self, f"{which}_max")
        if self.calibrating:  # eager: widen the range to what the data shows
            low.assign(tf.minimum(low, tf.reduce_min(x)))
            high.assign(tf.maximum(high, tf.reduce_max(x)))
            return x
        return _quant_ops().MovingAvgQuantize(
            x,
            low.value,
            high.value,
            ema_decay=self.ema_decay,
            is_training=bool(training),
            num_bits=8,
            narrow_range=False,
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedDense(_ActivationQuantizer, keras.layers.Dense):
    """`keras.layers.Dense` with fake-quantized kernel and output (same weights)."""

    def _product(self, inputs):
        # Per tensor: the converter transposes a Dense kernel into FULLY_CONNECTED's
        # (out, in) layout and refuses a per-channel fake quant across it (as tfmot).
        return ops.matmul(inputs, _fake_quant_weight(self.kernel, per_channel=False))


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedConv2D(_ActivationQuantizer, keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels_last) with fake-quantized kernel and output."""

    def _product(self, inputs):
        return self.convolution_op(inputs, _fake_quant_weight(self.kernel))


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedDepthwiseConv2D(_ActivationQuantizer, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` (channels_last) with fake-quantized kernel and output."""

    def _product(self, inputs):
        return ops.depthwise_conv(
            inputs,
            _fake_quant_weight(self.kernel, depthwise=True),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )


_QUANTIZED = {
    keras.layers.Dense: QuantizedDense,
    keras.layers.Conv2D: QuantizedConv2D,
    keras.layers.DepthwiseConv2D: QuantizedDepthwiseConv2D,
}


@contextlib.contextmanager
def _quantized_sublayers():
    saved = dict(sepvit_layers.SUBLAYER_CLASSES)
    sepvit_layers.SUBLAYER_CLASSES.update(
        {name: _QUANTIZED[cls] for name, cls in saved.items() if cls in _QUANTIZED}
    )
    try:
        yield
    finally:
        sepvit_layers.SUBLAYER_CLASSES.clear()
        sepvit_layers.SUBLAYER_CLASSES.update(saved)


def quantizers(model):
    """The fake-quantized layers of a model from `quantize_model`, nested ones included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, _ActivationQuantizer)
    ]


def _is_range(variable):
    return variable.path.rsplit("/", 1)[-1] in RANGE_NAMES


def _clone_layer(layer):
    cls = _QUANTIZED.get(type(layer))
    if cls is not None:
        return cls.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def _images(data, limit, input_shape=None):
    """Batches of float images from an array, a tf.data dataset or an iterable.

    Each batch is checked before it is used: numbers, rank 4 (or one image of
    rank 3), the model's input size and channels (`input_shape`, None dims
    free) and finite values. ValueError names the batch and what is wrong.
    """
    if hasattr(data, "as_numpy_iterator"):
        data = data.as_numpy_iterator()
    elif isinstance(data, np.ndarray):  # one image, or batches of 32 (an empty one if empty)
        data = [data] if data.ndim < 4 else [data[i : i + 32] for i in range(0, len(data) or 1, 32)]
    count = 0
    for index, item in enumerate(data):
        item = item[0] if isinstance(item, (tuple, list)) else item
        try:
            images = np.asarray(item, "float32")
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Calibration batch {index} is not an array of numbers ({error}). Received: "
                f"{type(item).__name__}"
            ) from error
        if images.ndim == 3:
            images = images[None]
        expected = tuple(input_shape) if input_shape is not None else None
        if images.ndim != 4 or (
            expected is not None
            and any(e is not None and e != r for e, r in zip(expected, images.shape[1:]))
        ):
            raise ValueError(
                f"Calibration batch {index} has shape {images.shape}; the model takes images of "
                f"shape (batch,) + {expected} (None: any size). Received: shape={images.shape}"
            )
        images = images[: limit - count]
        finite = np.isfinite(images)
        if not finite.all():
            raise ValueError(
                f"Calibration batch {index} holds {int(finite.size - finite.sum())} NaN or "
                "infinite values: activation ranges measured on them would be NaN. Clean or "
                "drop those images. Received: non-finite calibration_data"
            )
        if len(images):
            yield images
        count += len(images)
        if count >= limit:
            return


def calibrate(qat_model, data, limit=256):
    """Sets each activation range to the min/max (and 0) seen over up to `limit` images.

    `quantize_model` calls it; call it again to start the ranges from other data.
    Raises ValueError, with the ranges left as they were, on data without
    images, of another shape than the model's input or with NaN / infinite
    values, and if the measured ranges are not finite (e.g. non-finite weights).
    """
    layers = quantizers(qat_model)
    if not layers:
        raise ValueError("calibrate() needs a model from quantize_model(); it has no quantizers")
    if limit < 1:
        raise ValueError(f"calibrate() needs limit >= 1 images. Received: limit={limit}")
    before = [[getattr(layer, name).numpy() for name in RANGE_NAMES] for layer in layers]
    input_shape = tuple(qat_model.inputs[0].shape[1:]) if qat_model.inputs else None
    for layer in layers:
        for name in RANGE_NAMES:
            getattr(layer, name).assign(0.0)
        layer.calibrating = True
    seen = 0
    done = False
    try:
        for images in _images(data, limit, input_shape):
            qat_model(images, training=False)
            seen += len(images)
        if seen == 0:
            raise ValueError(
                "calibrate() received no images: pass at least one training image. "
                f"Received: {type(data).__name__} with 0 images"
            )
        bad = [
            layer.path
            for layer in layers
            if not all(np.isfinite(getattr(layer, name).numpy()) for name in RANGE_NAMES)
        ]
        if bad:
            raise ValueError(
                f"Calibration gave NaN or infinite activation ranges in {len(bad)} layers "
                f"({bad[:3]}): the model's weights or outputs are not finite on these images."
            )
        done = True
    finally:
        for layer, values in zip(layers, before):
            layer.calibrating = False
            if not done:  # refused: leave the ranges as they were
                for name, value in zip(RANGE_NAMES, values):
                    getattr(layer, name).assign(value)
    return seen


def quantize_model(model, calibration_data, calibration_limit=256):
    """A quantization-aware copy of a SepViT (or any Keras functional model).

    Args:
        model: a built Keras functional model on the TensorFlow backend, e.g.
            a trained `keras_sepvit.SepViTLite`. It is not changed.
        calibration_data: training images (array (N, H, W, C), a tf.data
            dataset of `(images, labels)` batches, or an iterable of batches)
            through the model's own preprocessing pipeline; their min/max
            start the activation ranges.
        calibration_limit: how many images to calibrate on.

    Returns:
        A new Keras model with the same weights in which every Dense, Conv2D
        and DepthwiseConv2D is fake-quantized (8-bit weights per channel and
        8-bit outputs). Compile and `fit` it like the float model, then
        convert it with `keras_sepvit.export.to_tflite(..., quantization="int8")`.
    """
    _check_backend()
    _quant_ops()  # fail early if tfmot is missing
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            f"quantize_model() needs a built functional Keras model. Received: {type(model)}"
        )
    if calibration_data is None:
        raise ValueError(
            "quantize_model() needs `calibration_data` (training images) to start the "
            "activation ranges. Received: None"
        )
    with _quantized_sublayers():
        qat_model = keras.models.clone_model(model, clone_function=_clone_layer)
    source = model.weights
    target = [v for v in qat_model.weights if not _is_range(v)]
    if len(source) != len(target):
        raise RuntimeError(f"the quantized copy has {len(target)} weights, the model {len(source)}")
    for src, dst in zip(source, target):
        if tuple(src.shape) != tuple(dst.shape):
            raise RuntimeError(
                f"weight {dst.path} {dst.shape} does not match {src.path} {src.shape}"
            )
        dst.assign(src)
    calibrate(qat_model, calibration_data, calibration_limit)
    return qat_model


def float_weights(qat_model, model):
    """Copies a QAT model's trained weights back into a float model of the same config.

    Every weight is checked (count and shapes) before any is copied: on a
    mismatch `model` is left unchanged and ValueError names the first weights
    that differ.
    """
    source = [v for v in qat_model.weights if not _is_range(v)]
    if len(source) != len(model.weights):
        raise ValueError(
            f"`model` has {len(model.weights)} weights; the QAT model {len(source)} "
            "(without its ranges): not the same architecture. No weight was copied."
        )
    mismatched = [
        f"{dst.path} {tuple(dst.shape)} <- {src.path} {tuple(src.shape)}"
        for src, dst in zip(source, model.weights)
        if tuple(src.shape) != tuple(dst.shape)
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} weights of `model` do not match the QAT model's "
            f"({mismatched[:3]}): not the same config. No weight was copied."
        )
    for src, dst in zip(source, model.weights):
        dst.assign(src)
    return model
