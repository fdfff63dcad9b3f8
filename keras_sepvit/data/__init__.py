"""Input pipelines (tf.data; TensorFlow only), one module per task.

- `classification`: tfds names or image folders, the paper's augmentation,
  Mixup/CutMix, the digits splits. Its names are re-exported here, so
  `from keras_sepvit import data; data.make_dataset(...)` works.
- `segmentation`: ADE20K (tfds or ADEChallengeData2016 folders) and digit
  scenes, mmsegmentation's augmentation, exact resume.
- `detection`: COCO (tfds), COCO-JSON folders and digit scenes, resized and
  padded to one square canvas, exact resume.
- `digit_scenes`: the offline detection/segmentation dataset (NumPy).
- `splits`: `Split`, the one split type of all of them, and `DataError`.
"""

from keras_sepvit.data.classification import (
    IMAGE_EXTENSIONS,
    IMAGENET_TARS,
    array_split,
    center_crop,
    digits_split,
    digits_splits,
    eval_steps,
    load_split,
    make_dataset,
    mix_batch,
    random_resized_crop,
    steps_per_epoch,
    unreadable_images,
)
from keras_sepvit.data.splits import DataError, Split

__all__ = [
    "IMAGENET_TARS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "Split",
    "array_split",
    "center_crop",
    "digits_split",
    "digits_splits",
    "eval_steps",
    "load_split",
    "make_dataset",
    "mix_batch",
    "random_resized_crop",
    "steps_per_epoch",
    "unreadable_images",
]
