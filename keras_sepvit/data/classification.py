"""Classification input pipelines for training and evaluation (tf.data; TensorFlow only).

Sources: any `tensorflow-datasets` name (ImageNet-1K is `imagenet2012`, which
needs the manual download), or a folder of images laid out as
`root/<split>/<class>/*.jpg`. Training augmentation follows the DeiT/PVT
recipe the paper trains with: random resized crop + flip, RandAugment, random
erasing, then Mixup/CutMix on batches; evaluation resizes to 256 and centre
crops 224 (crop fraction 0.875).
"""

import math
import os

import numpy as np
import tensorflow as tf

from keras_sepvit.data.splits import DataError, Split

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def image_sizes(paths):
    """`{path: (height, width)}` of the files among `paths` that decode as
    images (one parallel tf.data pass); the others are left out."""
    if not paths:
        return {}

    def probe(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)[:2]

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    return {path.decode(): (int(h), int(w)) for path, (h, w) in ds.as_numpy_iterator()}


def unreadable_images(paths):
    """The files among `paths` that do not decode as images (one parallel tf.data pass)."""
    sizes = image_sizes(paths)
    return [p for p in paths if p not in sizes]


def readable_images(paths, where, skip_unreadable=False):
    """`{path: (height, width)}` of `paths`, checked by decoding each file once.

    Files that do not decode as images are a `DataError` naming them (and
    `where`, the folder), or with `skip_unreadable` left out with a printed count.
    """
    sizes = image_sizes(paths)
    bad = [p for p in paths if p not in sizes]
    if bad and not skip_unreadable:
        raise DataError(
            f"{len(bad)} of {len(paths)} files under {where!r} do not decode as images: "
            f"{bad[:5]}{' ...' if len(bad) > 5 else ''}. Remove or replace them, or skip them "
            "with skip_unreadable=True (--skip-unreadable)."
        )
    if bad:
        print(f"Skipped {len(bad)} unreadable files under {where} (first: {bad[0]})")
    return {p: sizes[p] for p in paths if p in sizes}


def _folder_split(root, split, class_names=None, skip_unreadable=False):
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No folder {directory!r}: an image folder dataset is laid out as "
            f"root/<split>/<class>/*.jpg. Received: root={root!r}, split={split!r}"
        )
    found = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    class_names = class_names or found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ValueError(
            f"Classes {unknown[:5]} in {directory!r} are not among the training classes "
            f"{class_names[:5]}..."
        )
    paths, labels = [], []
    for index, name in enumerate(class_names):
        class_dir = os.path.join(directory, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(class_dir, file))
                labels.append(index)
    readable = readable_images(paths, directory, skip_unreadable)
    labels = [label for path, label in zip(paths, labels) if path in readable]
    paths = [path for path in paths if path in readable]
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {directory!r}")

    def decode(path, label):
        contents = tf.io.read_file(path)
        # JPEG with the accurate IDCT (decode_image's default is the fast one, a
        # few levels off): the pixels Pillow gives, so examples/run_tflite.py
        # feeds a phone model exactly what training saw.
        image = tf.cond(
            tf.io.is_jpeg(contents),
            lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
        )
        return tf.ensure_shape(image, (None, None, 3)), label

    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, "int64")))
    return Split(ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE), len(paths), class_names)


def _check_imagenet_manual_dir(manual_dir):
    missing = [t for t in IMAGENET_TARS if not os.path.exists(os.path.join(manual_dir or "", t))]
    if manual_dir is None or missing:
        raise FileNotFoundError(
            "imagenet2012 cannot be downloaded: put the two archives "
            f"{' and '.join(IMAGENET_TARS)} from image-net.org in one folder and pass it "
            f"as --manual-dir. Missing: {missing} in manual_dir={manual_dir!r}"
        )


def load_split(
    source, split, data_dir=None, manual_dir=None, class_names=None, skip_unreadable=False
):
    """Loads one split from a tfds name or an image folder.

    Args:
        source: a `tensorflow-datasets` name ("imagenet2012", "cifar10", ...) or
            the root of a `root/<split>/<class>/*.jpg` folder.
        split: split name ("train", "validation", "train[:90%]", ...).
        data_dir: tfds data directory.
        manual_dir: folder with manually downloaded archives (imagenet2012).
        class_names: for folders, the training split's class order.
        skip_unreadable: for folders, skip (and count) files that do not decode
            as images; by default they are an error that names them. Every
            file is decoded once here to check it.

    Returns:
        A `Split`.
    """
    if os.path.isdir(source):
        return _folder_split(source, split, class_names, skip_unreadable)
    import tensorflow_datasets as tfds

    if source.startswith("imagenet2012") and not os.path.isdir(
        os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"), source)
    ):
        _check_imagenet_manual_dir(manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder = tfds.builder(source, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    info = builder.info
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=True)
    try:
        num_examples = info.splits[split].num_examples
    except KeyError:  # no split metadata (e.g. under tfds.testing.mock_data)
        cardinality = int(ds.cardinality())
        num_examples = cardinality if cardinality >= 0 else None
    names = info.features["label"].names

    def to_rgb(image, label):
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif image.shape[-1] is None:
            image = tf.cond(
                tf.shape(image)[-1] == 1,
                lambda: tf.tile(image[..., :1], [1, 1, 3]),
                lambda: image[..., :3],
            )
        return image, label

    return Split(ds.map(to_rgb, num_parallel_calls=tf.data.AUTOTUNE), num_examples, names)


def array_split(images, labels, class_names):
    """A `Split` from in-memory arrays: images (N, H, W, 3) uint8, labels (N,) int."""
    ds = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, "int64")))
    return Split(ds, len(images), class_names)


def digits_splits(seed=0):
    """scikit-learn's bundled digits (1,797 real 8x8 scans) as RGB uint8 splits.

    Stratified: "test" is 20% held out, "val" 10% of the rest, "train" the
    remainder; fixed by `seed`. Returns {name: (images (N, 8, 8, 3), labels)}.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.repeat((digits.images / 16.0 * 255.0).astype("uint8")[..., None], 3, -1)
    labels = digits.target.astype("int64")
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.1, random_state=seed, stratify=y_rest
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def digits_split(split, seed=0):
    """A `Split` of the digits by name: "train", "val" (or "validation") or
    "test", optionally sliced ("train[:256]"); raises `DataError` naming it."""
    name, _, limit = split.partition("[:")
    name = {"validation": "val"}.get(name, name)
    splits = digits_splits(seed)
    if name not in splits or (limit and not limit.rstrip("]").isdigit()):
        raise DataError(
            f"digits has the splits {sorted(splits)} (optionally sliced, e.g. "
            f"'train[:256]'). Received: {split!r}"
        )
    images, labels = splits[name]
    if limit:
        count = int(limit.rstrip("]"))
        images, labels = images[:count], labels[:count]
    return array_split(images, labels, [str(i) for i in range(10)])


def random_resized_crop(image, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop of a random area/aspect, resized to `size` x `size`."""
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    return tf.image.resize(image, (size, size), method="bicubic", antialias=True)


def center_crop(image, size, crop_fraction=0.875):
    """Resize the short side to size / crop_fraction (256 for 224), crop the centre."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / crop_fraction) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new, method="bicubic", antialias=True)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _beta(alpha, seed_shape=()):
    a = tf.random.gamma(seed_shape, alpha)
    b = tf.random.gamma(seed_shape, alpha)
    return a / (a + b)


def mix_batch(images, labels, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5):
    """Mixup or CutMix (one per batch, chosen with `switch_prob` for CutMix).

    `images` (B, H, W, C) float, `labels` (B, K) one-hot/soft. The batch is
    mixed with its reverse, as in timm's `Mixup(mode="batch")`.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or tf.random.uniform(()) < switch_prob)
    flipped_images = tf.reverse(images, axis=[0])
    flipped_labels = tf.reverse(labels, axis=[0])

    def cutmix():
        lam = _beta(cutmix_alpha)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        cut = tf.sqrt(1.0 - lam)
        cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
        cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
        cy = tf.random.uniform((), 0, height, dtype=tf.int32)
        cx = tf.random.uniform((), 0, width, dtype=tf.int32)
        y0, y1 = tf.maximum(cy - cut_h // 2, 0), tf.minimum(cy + cut_h // 2, height)
        x0, x1 = tf.maximum(cx - cut_w // 2, 0), tf.minimum(cx + cut_w // 2, width)
        rows = tf.range(height)[:, None]
        cols = tf.range(width)[None, :]
        box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        box = tf.cast(box, images.dtype)[None, :, :, None]
        mixed = images * (1.0 - box) + flipped_images * box
        area = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
        lam_adj = 1.0 - area / tf.cast(height * width, tf.float32)  # the true kept area
        return mixed, labels * lam_adj + flipped_labels * (1.0 - lam_adj)

    def mixup():
        lam = _beta(mixup_alpha)
        mixed = images * lam + flipped_images * (1.0 - lam)
        return mixed, labels * lam + flipped_labels * (1.0 - lam)

    if isinstance(use_cutmix, bool):
        return cutmix() if use_cutmix else mixup()
    return tf.cond(use_cutmix, cutmix, mixup)


def make_dataset(
    split,
    training,
    batch_size,
    image_size=224,
    randaugment=(2, 9),
    random_erasing=0.25,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    crop_scale=(0.08, 1.0),
    crop_fraction=0.875,
    flip=True,
    shuffle_buffer=10_000,
    seed=None,
    repeat=False,
    drop_remainder=None,
):
    """Batches of `(images float32 [0, 255] (B, S, S, 3), labels (B, K))`.

    Training: random resized crop + flip, RandAugment (`(num_ops, magnitude)`
    on timm's 0-10 scale, or None), random erasing (probability), then
    Mixup/CutMix. Evaluation: resize 256 / centre crop 224 (`crop_fraction`
    0.875, scaled to `image_size`). Labels are one-hot (soft after mixing). The model
    normalises inside, so images stay in [0, 255].
    """
    import keras

    num_classes = split.num_classes
    ds = split.dataset
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    augment = None
    if training and randaugment:
        num_ops, magnitude = randaugment
        augment = keras.layers.RandAugment(
            value_range=(0, 255), num_ops=num_ops, factor=magnitude / 10.0, seed=seed
        )
    eraser = None
    if training and random_erasing > 0:
        eraser = keras.layers.RandomErasing(
            # A (p, p) factor: erase with probability exactly p (a float samples in [0, p]).
            factor=(random_erasing, random_erasing),
            scale=(0.02, 1 / 3),
            value_range=(0, 255),
            seed=seed,
        )

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if training:
            image = random_resized_crop(image, image_size, scale=crop_scale)
            if flip:
                image = tf.image.random_flip_left_right(image)
        else:
            image = center_crop(image, image_size, crop_fraction)
        image = tf.clip_by_value(image, 0.0, 255.0)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        return image, tf.one_hot(label, num_classes)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if drop_remainder is None:
        drop_remainder = training
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None or eraser is not None:

        def batch_augment(images, labels):
            if augment is not None:
                images = augment(images, training=True)
            if eraser is not None:
                images = eraser(images, training=True)
            return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0), labels

        ds = ds.map(batch_augment, num_parallel_calls=tf.data.AUTOTUNE)
    if training and (mixup_alpha > 0 or cutmix_alpha > 0):
        ds = ds.map(
            lambda x, y: mix_batch(x, y, mixup_alpha, cutmix_alpha),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(num_examples, batch_size):
    """Full batches per epoch (training drops the remainder); refuses 0."""
    if num_examples < batch_size:
        raise ValueError(
            f"The batch is larger than the training data, so an epoch would have no step: "
            f"use batch_size <= {num_examples}. Received: batch_size={batch_size}, "
            f"num_examples={num_examples}"
        )
    return num_examples // batch_size


def eval_steps(num_examples, batch_size):
    return math.ceil(num_examples / batch_size)
