"""What an exported file takes and gives: the model's input and outputs.

The exporters read a Keras model through these: its static input shape,
whether it takes raw [0, 255] pixels, whether it is a segmenter (checked
per pixel) or a keras-hub model (exported unfolded), the keys of a dict
output (a detector's raw head outputs, written as named graph outputs), and
`keras_outputs`, what the exported file must reproduce.
"""

import keras
import numpy as np


def static_input_shape(model):
    """The model's input shape without the batch, e.g. (224, 224, 3).

    Raises:
        ValueError: if a dimension is None (edge runtimes plan memory for a
            static size).
    """
    shape = tuple(model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            "Export needs a static input size (the edge runtimes plan memory for it). "
            f"Received: input_shape={model.input_shape}; rebuild the model with "
            "e.g. input_shape=(224, 224, 3) and set_weights()."
        )
    return shape


def takes_raw_pixels(model):
    """Whether the model normalises [0, 255] RGB inside (a SepViT built with
    `include_preprocessing=True`)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == "normalization" and isinstance(layer, keras.layers.Rescaling):
            return True
    return False


def output_keys(model):
    """The keys of a model's dict output (a detector's raw head outputs), else None."""
    output = model.output if isinstance(model, keras.Model) else None
    return sorted(output) if isinstance(output, dict) else None


def is_segmenter(model):
    """A keras-hub `ImageSegmenter` (per-pixel logits, checked per pixel)."""
    return any(cls.__name__ == "ImageSegmenter" for cls in type(model).__mro__)


def is_keras_hub(model):
    """Whether the model is a keras-hub class (a task or backbone)."""
    return any(cls.__module__.startswith("keras_hub.") for cls in type(model).__mro__)


def named_outputs(model, batch_size=None):
    """`model` with a static batch and its dict outputs as named graph outputs.

    The exported files then name their outputs by the Keras keys
    (`bbox_regression`, `cls_logits`), which the runners return as a dict.
    """
    inputs = keras.Input(batch_shape=(batch_size,) + static_input_shape(model), name="image")
    outputs = model(inputs)
    if isinstance(outputs, dict):
        outputs = {k: keras.layers.Identity(name=k)(outputs[k]) for k in sorted(outputs)}
    return keras.Model(inputs, outputs, name=f"{model.name}_export")


def keras_outputs(model, x, batch_size=8):
    """What the exported file must reproduce: `model`'s raw outputs on `x`.

    `model.predict` for a classifier or segmenter; for a model whose outputs
    are a dict (a keras-hub detector, whose `predict` decodes boxes), the
    network's raw outputs, as a dict of arrays.
    """
    if output_keys(model) is None:
        return np.asarray(model.predict(x, verbose=0, batch_size=batch_size))
    twin = keras.Model(model.inputs, model.outputs)  # plain Model.predict: no decoding
    outputs = twin.predict(x, verbose=0, batch_size=batch_size)
    if not isinstance(outputs, dict):
        outputs = dict(zip(sorted(model.output), outputs))
    return {k: np.asarray(v) for k, v in outputs.items()}
