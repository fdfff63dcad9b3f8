"""Evaluation's image preparation in NumPy and Pillow, for the device side.

`keras_sepvit.data.center_crop` (TensorFlow) is what the accuracy figures
are measured on: the short side resized to `size / crop_fraction` (256 for
224), bicubic with antialiasing, then the centre `size` x `size` crop;
`make_dataset` then clips to [0, 255]. An app that stretches the photo to
the input size instead feeds the model other pixels (tens of grey levels
apart on a 300x200 photo). This module does the same transform without
TensorFlow: Pillow's BICUBIC resampling on float32 planes is the same
separable Keys cubic (a = -0.5) with the same antialiasing (the kernel
widened by the downscale factor) and half-pixel centres as TensorFlow's
`tf.image.resize(..., "bicubic", antialias=True)`; the two agree within
1e-3 grey levels (`tests/test_export_trust.py`).

It imports NumPy and Pillow only, so `examples/run_tflite.py` loads this one
file without Keras or TensorFlow: the code a phone app ports.
"""

import numpy as np
from PIL import Image

# Evaluation's default (keras_sepvit.data.make_dataset): 224 from a 256 short side.
CROP_FRACTION = 0.875


def crop_geometry(height, width, size, crop_fraction=CROP_FRACTION):
    """`((new_height, new_width), (top, left))`: the resized image's size and
    the crop's corner, with `keras_sepvit.data.center_crop`'s float32
    arithmetic (round half to even, as `tf.round`)."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"`crop_fraction` must be in (0, 1]. Received: {crop_fraction!r}")
    shape = np.array([height, width], np.float32)
    scale = np.float32(size / crop_fraction) / shape.min()
    new_height, new_width = (int(v) for v in np.round(shape * scale))
    return (new_height, new_width), ((new_height - size) // 2, (new_width - size) // 2)


def _resize_bicubic(image, height, width):
    """(H, W, C) float32 -> (height, width, C): each channel a Pillow "F" image."""
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F").resize(
                (width, height), Image.BICUBIC
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, axis=-1)


def center_crop(image, size, crop_fraction=CROP_FRACTION):
    """`keras_sepvit.data.center_crop` in NumPy/Pillow: (H, W, C) -> (size, size, C) float32.

    Args:
        image: (H, W, C) array, [0, 255] pixels (uint8 or float).
        size: int, the model's input side.
        crop_fraction: float in (0, 1]: the short side is resized to
            `size / crop_fraction`. Defaults to 0.875 (evaluation's).

    Returns:
        float32 (size, size, C), not clipped (bicubic overshoots a little,
        as TensorFlow's does).
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"`image` must be (H, W, C). Received: shape {image.shape}")
    (new_height, new_width), (top, left) = crop_geometry(*image.shape[:2], size, crop_fraction)
    resized = _resize_bicubic(image, new_height, new_width)
    return resized[top : top + size, left : left + size]


def prepare_image(image, size, crop_fraction=CROP_FRACTION):
    """What evaluation feeds the model: `center_crop`, then clipped to [0, 255]
    (`keras_sepvit.data.make_dataset`'s evaluation branch), float32."""
    return np.clip(center_crop(image, size, crop_fraction), 0.0, 255.0)


def describe(size, crop_fraction=CROP_FRACTION):
    """One line saying which transform `prepare_image` applies."""
    short = round(size / crop_fraction)
    return (
        f"Preparing images as evaluation does: short side to {short} (bicubic, antialiased) "
        f"then centre {size}x{size} crop (crop fraction {crop_fraction:g})"
    )
