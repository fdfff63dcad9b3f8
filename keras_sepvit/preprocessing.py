"""ImageNet input normalisation and data-format handling, shared by the whole package.

The authors' model takes images normalised with the ImageNet mean and std.
SepViT models built with `include_preprocessing=True` do that inside (the
affine map `normalization_affine`); `normalize_images` does the same map
outside the model, on NumPy arrays, TensorFlow tensors (also inside a
`tf.data` pipeline, whatever the Keras backend) and Keras backend tensors.
"""

import keras
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inputs with another channel count than RGB (grayscale, RGBA, ...): every
# channel is normalised with the RGB statistics averaged over the channels.
OTHER_MEAN = sum(IMAGENET_MEAN) / 3
OTHER_STD = sum(IMAGENET_STD) / 3

DATA_FORMATS = ("channels_first", "channels_last")


def resolve_data_format(data_format):
    """`data_format`, or `keras.config.image_data_format()` for None; checked.

    Args:
        data_format: None, "channels_first" or "channels_last".

    Returns:
        "channels_first" or "channels_last".

    Raises:
        ValueError: for any other value, naming it.
    """
    data_format = keras.config.image_data_format() if data_format is None else data_format
    if data_format not in DATA_FORMATS:
        raise ValueError(
            "`data_format` must be None, 'channels_first' or 'channels_last'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


def channel_statistics(channels):
    """(mean, std) per channel, in [0, 1] pixel units, for `channels` channels.

    RGB (3 channels) gets the ImageNet statistics; any other count gets the
    channel-averaged ones (`OTHER_MEAN`, `OTHER_STD`) on every channel.
    """
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (OTHER_MEAN,) * channels, (OTHER_STD,) * channels


def normalization_affine(channels=3):
    """(x / 255 - mean) / std as `x * scale + offset`: the lists (scale, offset).

    What the models' `include_preprocessing=True` layer and the keras-hub
    image converter store.
    """
    mean, std = channel_statistics(channels)
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


def _is_tensorflow(x):
    return type(x).__module__.startswith("tensorflow")


def normalize_images(x, data_format=None):
    """[0, 255] pixels -> ImageNet mean/std normalised (what the authors' model takes).

    The same map as the models' `include_preprocessing=True`: RGB with the
    ImageNet statistics, other channel counts with the channel-averaged ones.
    Plain arithmetic on the input's own kind: NumPy in, NumPy out; a
    TensorFlow tensor stays a TensorFlow tensor (so it works in `tf.data`
    under any Keras backend); a backend or symbolic Keras tensor stays one.

    Args:
        x: images, (..., H, W, C) for "channels_last" or (..., C, H, W) for
            "channels_first", any numeric dtype; computed in float32.
        data_format: None (`keras.config.image_data_format()`),
            "channels_first" or "channels_last".

    Returns:
        float32 images of the same shape and kind.
    """
    channels_first = resolve_data_format(data_format) == "channels_first"
    tensorflow = _is_tensorflow(x)
    if tensorflow:
        import tensorflow as tf  # already imported: `x` is one of its tensors

        x = tf.cast(x, tf.float32)
    elif isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        x = np.asarray(x, "float32")
    else:
        x = keras.ops.cast(x, "float32")
    if len(x.shape) < 3:
        raise ValueError(
            "`normalize_images` expects images (..., H, W, C) or (..., C, H, W). "
            f"Received: an input of shape {tuple(x.shape)}"
        )
    channels = x.shape[-3] if channels_first else x.shape[-1]
    # One statistic broadcast over the channels unless RGB (also for an unknown count).
    mean, std = channel_statistics(3) if channels == 3 else channel_statistics(1)
    shape = (-1, 1, 1) if channels_first else (-1,)
    mean = np.reshape(np.asarray(mean, "float32") * 255.0, shape)  # (C,) or (C, 1, 1)
    std = np.reshape(np.asarray(std, "float32") * 255.0, shape)
    if not (tensorflow or isinstance(x, np.ndarray)):
        # Backend tensors, not NumPy arrays: `torch_tensor - ndarray` fails.
        mean, std = keras.ops.convert_to_tensor(mean), keras.ops.convert_to_tensor(std)
    return (x - mean) / std


def preprocess_input(x, data_format=None):
    """A placeholder, as in `keras.applications.convnext`: returns `x` unchanged.

    SepViT models normalise inside (`include_preprocessing=True`), so they take
    pixel values in [0, 255] unchanged. For a model built with
    `include_preprocessing=False`, use `normalize_images` instead.

    Args:
        x: images (any array or tensor), returned as they are.
        data_format: None (`keras.config.image_data_format()`),
            "channels_first" or "channels_last". Checked, then unused.

    Returns:
        `x`.
    """
    resolve_data_format(data_format)
    return x
