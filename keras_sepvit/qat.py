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


def _images(data, limit):
    """Batches of float images from an array, a tf.data dataset or an iterable."""
    if hasattr(data, "as_numpy_iterator"):
        data = data.as_numpy_iterator()
    elif isinstance(data, np.ndarray):
        data = [data[i : i + 32] for i in range(0, len(data), 32)]
    count = 0
    for item in data:
        images = np.asarray(item[0] if isinstance(item, (tuple, list)) else item, "float32")
        if images.ndim == 3:
            images = images[None]
        yield images[: limit - count]
        count += len(images)
        if count >= limit:
            return


def calibrate(qat_model, data, limit=256):
    """Sets each activation range to the min/max (and 0) seen over up to `limit` images.

    `quantize_model` calls it; call it again to start the ranges from other data.
    """
    layers = quantizers(qat_model)
    if not layers:
        raise ValueError("calibrate() needs a model from quantize_model(); it has no quantizers")
    for layer in layers:
        for name in RANGE_NAMES:
            getattr(layer, name).assign(0.0)
        layer.calibrating = True
    seen = 0
    try:
        for images in _images(data, limit):
            qat_model(images, training=False)
            seen += len(images)
    finally:
        for layer in layers:
            layer.calibrating = False
    if seen == 0:
        raise ValueError("calibrate() received no images")
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
    """Copies a QAT model's trained weights back into a float model of the same config."""
    source = [v for v in qat_model.weights if not _is_range(v)]
    if len(source) != len(model.weights):
        raise ValueError(
            f"`model` has {len(model.weights)} weights; the QAT model {len(source)} "
            "(without its ranges): not the same architecture"
        )
    for src, dst in zip(source, model.weights):
        dst.assign(src)
    return model
