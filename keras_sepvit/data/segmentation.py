"""Semantic segmentation input pipelines (tf.data; TensorFlow only).

Sources (`load_split`):
- a tfds dataset with an image and a label map, e.g. `scene_parse150`
  (ADE20K's 150 classes: label 0 is "other", 1..150 the classes);
- a folder in ADEChallengeData2016's layout (what mmsegmentation trains on):
  `root/images/<split>/NAME.jpg` and `root/annotations/<split>/NAME.png`
  (single-channel class ids);
- the offline digit scenes (`digit_scene_splits`).

A folder is checked when loaded (`load_split`): files that do not decode
and label values that are not classes are a `DataError` naming the file.

Training batches follow mmsegmentation's ADE20K pipeline: random rescale of
the image so that it fits (2048, 512) times a ratio in [0.5, 2], random crop
(images padded with 0 and labels with the ignore label where the image is
smaller), random horizontal flip. The photometric distortion of mmseg is
left out. Every random choice is a stateless function of (seed, epoch,
position), so a resumed run sees exactly the batches an uninterrupted one
would (`train_dataset`).

Evaluation resizes each image to fit the crop size (keeping its aspect) and
pads it to a square (labels padded with the ignore label, which the metric
skips), so batches have one static shape; mmseg instead runs whole images at
short side 512 and scores at the original resolution.
"""

import os

import numpy as np

from keras_sepvit.data import digit_scenes
from keras_sepvit.data.classification import readable_images
from keras_sepvit.data.splits import DataError, Split
from keras_sepvit.preprocessing import normalize_images

IGNORE_CLASS = 255
# Digit scenes for segmentation: 1-3 digits, the 8x8 scans scaled x3-4 (24-32
# pixels, strokes at least 3 pixels wide); the segmentation demo's layout.
DIGIT_SCENES = dict(digit_scale=(3, 4), digits_per_scene=(1, 3))


def valid_label_values(num_classes, reduce_zero_label=False):
    """The label-map values a model of `num_classes` trains on: the classes
    0..num_classes - 1 (with `reduce_zero_label` 1..num_classes, and 0 ignored)
    and `IGNORE_CLASS`."""
    first = 1 if reduce_zero_label else 0
    return set(range(first, first + num_classes)) | {IGNORE_CLASS} | set(range(first))


def _label_values(paths):
    """`{path: values present}` of label maps, decoded as the pipelines decode
    them (one parallel tf.data pass)."""
    import tensorflow as tf

    def probe(path):
        label = tf.io.decode_png(tf.io.read_file(path), channels=1)
        counts = tf.math.bincount(tf.cast(tf.reshape(label, [-1]), tf.int32), minlength=256)
        return path, counts

    data = tf.data.Dataset.from_tensor_slices(list(paths))
    data = data.map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return {p.decode(): np.flatnonzero(counts) for p, counts in data.as_numpy_iterator()}


def _check_label_values(paths, label_dir, num_classes, reduce_zero_label):
    valid = valid_label_values(num_classes, reduce_zero_label)
    values = _label_values(paths)
    bad = [(p, sorted(set(values[p].tolist()) - valid)) for p in paths]
    bad = [(p, v) for p, v in bad if v]
    if bad:
        first = 1 if reduce_zero_label else 0
        ignored = f"0 and {IGNORE_CLASS}" if reduce_zero_label else str(IGNORE_CLASS)
        raise DataError(
            f"{len(bad)} of {len(paths)} label maps under {label_dir!r} hold values that are "
            f"not classes: {'; '.join(f'{p} holds {v[:5]}' for p, v in bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}. With num_classes={num_classes}, "
            f"reduce_zero_label={reduce_zero_label} the values are {first}.."
            f"{first + num_classes - 1} (classes) and {ignored} (ignored). Fix the maps, or "
            "set --num-classes / --reduce-zero-label to what they hold."
        )


def _folder_split(root, split, num_classes=None, reduce_zero_label=False, skip_unreadable=False):
    import tensorflow as tf

    image_dir = os.path.join(root, "images", split)
    label_dir = os.path.join(root, "annotations", split)
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise DataError(
                "An image/label folder must be laid out as root/images/<split>/NAME.jpg and "
                f"root/annotations/<split>/NAME.png. Received: no folder {folder!r}"
            )
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(image_dir))
    labels = {os.path.splitext(n)[0]: n for n in os.listdir(label_dir)}
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(
            f"{len(missing)} images of {image_dir!r} have no label map in {label_dir!r} "
            f"(e.g. {missing[:3]})"
        )
    if not names:
        raise DataError(f"No images in {image_dir!r}. Received: an empty folder")
    images = {os.path.splitext(n)[0]: n for n in os.listdir(image_dir)}
    pairs = [
        (os.path.join(image_dir, images[n]), os.path.join(label_dir, labels[n])) for n in names
    ]
    readable = readable_images([f for pair in pairs for f in pair], root, skip_unreadable)
    pairs = [(i, label) for i, label in pairs if i in readable and label in readable]
    if not pairs:
        raise DataError(f"No readable images in {image_dir!r}")
    image_paths, label_paths = [list(files) for files in zip(*pairs)]
    if num_classes is not None:
        _check_label_values(label_paths, label_dir, num_classes, reduce_zero_label)

    def decode(image_path, label_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
        label = tf.io.decode_png(tf.io.read_file(label_path), channels=1)[..., 0]
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((image_paths, label_paths)).map(decode)
    return Split(dataset, len(image_paths))


def _tfds_split(name, split, data_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()
    info = builder.info
    keys = [k for k in info.features.keys() if k != "image"]
    if "image" not in info.features or not keys:
        raise DataError(
            f"tfds dataset {name!r} needs an 'image' and a label-map feature. "
            f"Received: features {list(info.features.keys())}"
        )
    label_key = (
        "annotation"
        if "annotation" in keys
        else ("segmentation_mask" if "segmentation_mask" in keys else keys[0])
    )

    def pick(example):
        label = example[label_key]
        if len(label.shape) == 3:  # a PNG decoded with channels: the class is channel 0
            label = label[..., 0]
        return example["image"], label

    dataset = builder.as_dataset(split=split, shuffle_files=False).map(pick)
    try:
        num_examples = info.splits[split].num_examples
    except KeyError:  # no split metadata (e.g. under tfds.testing.mock_data)
        num_examples = int(dataset.cardinality())
    return Split(dataset, num_examples)


def load_split(
    dataset, split, data_dir=None, num_classes=None, reduce_zero_label=False, skip_unreadable=False
):
    """A `Split` from a tfds name or an ADEChallengeData2016-style folder.

    A folder is checked when loaded: every image and label map is decoded
    once (a file that does not decode is a `DataError` naming it, or with
    `skip_unreadable` its pair is left out with a printed count), and, given
    `num_classes`, a label map holding a value the model cannot train on
    (see `valid_label_values`) is a `DataError` naming it.

    Args:
        dataset: a tfds name or a folder (see the module docstring).
        split: split name.
        data_dir: tfds data directory.
        num_classes: int or None. Folders: check the label maps' values.
        reduce_zero_label: bool. As in `train_dataset` (0 ignored, c -> c - 1).
        skip_unreadable: bool. Folders: skip pairs with a file that does not decode.
    """
    if os.path.isdir(dataset):
        return _folder_split(dataset, split, num_classes, reduce_zero_label, skip_unreadable)
    return _tfds_split(dataset, split, data_dir)


def digit_scene_splits(num_train=2000, num_test=300, image_size=64, seed=0):
    """Training and held-out digit scenes (disjoint scans) as `Split`s of
    `(image uint8 (S, S, 3), mask uint8 (S, S))`, laid out as `DIGIT_SCENES`."""
    import tensorflow as tf

    splits = []
    for split, count, offset in (("train", num_train, 0), ("test", num_test, 1)):
        scenes = digit_scenes.make_digit_scenes(
            count,
            image_size=(image_size, image_size),
            **DIGIT_SCENES,
            split=split,
            seed=seed + offset,
        )
        data = tf.data.Dataset.from_tensor_slices((scenes["images"], scenes["masks"]))
        splits.append(Split(data, count))
    return tuple(splits)


def _labels(label, reduce_zero_label):
    import tensorflow as tf

    label = tf.cast(label, tf.int32)
    if reduce_zero_label:  # ADE20K: 0 ("other") ignored, classes 1..150 -> 0..149
        ignored = (label == 0) | (label == IGNORE_CLASS)  # mmseg keeps 255 ignored
        label = tf.where(ignored, IGNORE_CLASS, label - 1)
    return label


def _augment(image, label, seed, crop_size, scale_range, base_scale, flip):
    """Random rescale, crop (with padding) and flip, all stateless under `seed`."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 4)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if scale_range is not None:
        ratio = tf.random.stateless_uniform((), seeds[0], scale_range[0], scale_range[1])
        fit = tf.minimum(base_scale[0] / tf.reduce_max(shape), base_scale[1] / tf.reduce_min(shape))
        size = tf.cast(tf.round(shape * fit * ratio), tf.int32)
        image = tf.image.resize(image, size, "bilinear")
        label = tf.image.resize(label[..., None], size, "nearest")[..., 0]
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    pad_h, pad_w = tf.maximum(crop_size - height, 0), tf.maximum(crop_size - width, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_CLASS)
    top = tf.random.stateless_uniform(
        (), seeds[1], 0, tf.shape(image)[0] - crop_size + 1, dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        (), seeds[2], 0, tf.shape(image)[1] - crop_size + 1, dtype=tf.int32
    )
    image = image[top : top + crop_size, left : left + crop_size]
    label = label[top : top + crop_size, left : left + crop_size]
    if flip:
        flipped = tf.random.stateless_uniform((), seeds[3]) < 0.5
        image = tf.cond(flipped, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(flipped, lambda: label[:, ::-1], lambda: label)
    return tf.ensure_shape(image, (crop_size, crop_size, 3)), tf.ensure_shape(
        label, (crop_size, crop_size)
    )


def train_dataset(
    split,
    batch_size,
    steps_per_epoch,
    epochs,
    crop_size=512,
    initial_epoch=0,
    seed=0,
    scale_range=(0.5, 2.0),
    base_scale=(2048, 512),
    flip=True,
    reduce_zero_label=False,
    shuffle_buffer=256,
):
    """Batches `(normalised images (B, crop, crop, 3), labels (B, crop, crop) int32)`
    for epochs `initial_epoch..epochs - 1`, `steps_per_epoch` batches each.

    Epoch e is a function of (seed, e) only: its shuffle and every
    augmentation are seeded with them, so resuming at epoch e gives the
    batches of an uninterrupted run. `scale_range=None` turns the rescale
    off (digit scenes), `flip=False` the flip.
    """
    import tensorflow as tf

    if initial_epoch >= epochs:
        raise ValueError(f"Nothing to train: initial_epoch={initial_epoch} >= epochs={epochs}")

    def one_epoch(epoch):
        epoch_seed = int(seed) * 100003 + int(epoch)
        data = split.dataset.shuffle(shuffle_buffer, seed=epoch_seed).repeat().enumerate()

        def prepare(index, example):
            image, label = example
            example_seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            image, label = _augment(
                image,
                _labels(label, reduce_zero_label),
                example_seed,
                crop_size,
                scale_range,
                base_scale,
                flip,
            )
            return normalize_images(image), label

        return (
            data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .take(steps_per_epoch)
        )

    dataset = one_epoch(initial_epoch)
    for epoch in range(initial_epoch + 1, epochs):
        dataset = dataset.concatenate(one_epoch(epoch))
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, batch_size, size=512, reduce_zero_label=False, limit=None):
    """Batches `(normalised images (B, size, size, 3), labels (B, size, size))`:
    each image resized to fit `size` and padded (labels with `IGNORE_CLASS`)."""
    import tensorflow as tf

    def prepare(image, label):
        label = _labels(label, reduce_zero_label)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        fit = tf.cast(tf.round(shape * size / tf.reduce_max(shape)), tf.int32)
        image = tf.image.resize(image, fit, "bilinear")
        label = tf.image.resize(label[..., None], fit, "nearest")[..., 0]
        pad_h, pad_w = size - fit[0], size - fit[1]
        image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
        label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_CLASS)
        image = tf.ensure_shape(image, (size, size, 3))
        return normalize_images(image), tf.ensure_shape(label, (size, size))

    data = split.dataset if limit is None else split.dataset.take(limit)
    return data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def array_split(images, labels):
    """A `Split` from arrays (N, H, W, 3) uint8 and (N, H, W) integer labels."""
    import tensorflow as tf

    images, labels = np.asarray(images), np.asarray(labels)
    return Split(tf.data.Dataset.from_tensor_slices((images, labels)), len(images))
