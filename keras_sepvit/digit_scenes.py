"""Moved to `keras_sepvit.data.digit_scenes`; this path keeps working."""

from keras_sepvit.data.digit_scenes import (
    CLASS_NAMES,
    NUM_CLASSES,
    NUM_MASK_CLASSES,
    instance_masks,
    make_digit_scenes,
    pad_boxes,
)

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "NUM_MASK_CLASSES",
    "instance_masks",
    "make_digit_scenes",
    "pad_boxes",
]
