"""Object detection input pipelines (tf.data; TensorFlow only).

Sources (`load_source`), each a `Split` whose examples are dicts: "image"
(H, W, 3) uint8, "boxes" (n, 4) xyxy pixels, "labels" (n,) contiguous class
ids, "image_id" int64, "crowd" (n,) bool:
- a tfds detection dataset (`coco/2017`: "objects/bbox", "objects/label");
- a COCO-JSON folder: `root/<split>/annotations.json` with the images at
  `root/<split>/<file_name>` or `root/<split>/images/<file_name>` (the split
  keeps the file's `COCO` ground truth and its category ids);
- the offline digit scenes (`keras_sepvit.data.digit_scenes`, 128x128).

With `masks=True` (Mask R-CNN) examples also hold "masks" (n, H, W) uint8,
one per box: a folder's polygon or RLE `segmentation`s
(`keras_sepvit.data.instance_masks`), the digit scenes' strokes; tfds'
coco/2017 has none and is refused. `train_dataset(..., masks=True)` moves
them with the image (resize, flip, pad).

Pipelines: images keep their aspect ratio (shorter side `min_side`, longer
at most `max_side`; digit scenes keep their size), are padded bottom/right
to one square canvas (`canvas_side`) so every batch has a static shape, and
normalised with the ImageNet statistics. Training batches are a function of
the seed and the step only, so a resumed run sees the batches an
uninterrupted one would. Unreadable sources raise `DataError`; a COCO-JSON
folder is checked whole when loaded (images that do not decode, invalid
boxes, unknown categories: `load_source`).
"""

import contextlib
import io
import json
import math
import os

import numpy as np

from keras_sepvit.data.classification import readable_images
from keras_sepvit.data.digit_scenes import CLASS_NAMES, instance_masks, make_digit_scenes
from keras_sepvit.data.instance_masks import (
    flip_masks,
    pad_masks,
    resize_masks,
    segmentation_rle,
    tf_decode_masks,
)
from keras_sepvit.data.splits import DataError, Split
from keras_sepvit.preprocessing import normalize_images
from keras_sepvit.tasks.coco_mask_eval import instance_ground_truth

ANNOTATIONS = "annotations.json"
SCENE_SIDE = 128  # digit scenes: 128x128 canvases
# Pixels a box edge may reach past the image (rounding, 1-based corners); such
# boxes are clipped to the image, boxes further out refused (`annotation_problem`).
BOX_TOLERANCE = 2.0
# tfds' coco/2017 holds boxes, labels and crowd flags per object, no masks.
MASKLESS_TFDS = (
    "tfds {name!r} has no instance masks (tfds coco/2017 holds boxes and labels only), so it "
    "cannot train Mask R-CNN: give the COCO folder instead, --dataset DIR with "
    "DIR/train/annotations.json and DIR/val/annotations.json (the official "
    "instances_train2017.json and instances_val2017.json) beside the images, or --digit-scenes"
)
REQUIRED_KEYS = {  # per entry of a COCO file's lists
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id"),
    "categories": ("id",),
}


def _tfds_source(name, split, data_dir=None):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:  # tfds raises many types for a missing/unknown dataset
        raise DataError(f"cannot load tfds dataset {name!r} split {split!r}: {e}") from e
    features = builder.info.features
    if "objects" not in features or "bbox" not in features["objects"]:
        raise DataError(
            f"tfds dataset {name!r} has no objects/bbox feature: it is not a "
            "detection dataset (use coco/2017, a COCO-JSON folder or --digit-scenes)"
        )

    def convert(example):
        image = example["image"]
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        ymin, xmin, ymax, xmax = tf.unstack(example["objects"]["bbox"], 4, axis=-1)
        boxes = tf.stack([xmin * size[1], ymin * size[0], xmax * size[1], ymax * size[0]], -1)
        objects = example["objects"]
        crowd = objects["is_crowd"] if "is_crowd" in objects else tf.zeros_like(objects["label"])
        boxes = tf.reshape(boxes, (-1, 4))  # (n, 4) xyxy pixels
        # One length for all (tfds' mock data draws each sequence's own).
        count = tf.reduce_min(
            tf.stack([tf.shape(boxes)[0], tf.size(objects["label"]), tf.size(crowd)])
        )
        return {
            "image": image,
            "boxes": boxes[:count],
            "labels": tf.cast(objects["label"][:count], tf.int32),
            "image_id": tf.cast(example.get("image/id", 0), tf.int64),
            "crowd": tf.cast(crowd[:count], tf.bool),
        }

    size = builder.info.splits[split].num_examples if split in builder.info.splits else None
    names = features["objects"]["label"].names
    return Split(dataset.map(convert), size, names)


def _read_coco(path, root, split):
    """The dict of a COCO annotation file, its lists and ids checked."""
    if not os.path.isfile(path):
        raise DataError(
            f"{path} not found: a COCO-JSON folder holds <split>/{ANNOTATIONS} and the "
            f"images. Received: --dataset {root} (split {split!r})"
        )
    try:
        with open(path) as f:
            dataset = json.load(f)
        if not isinstance(dataset, dict):
            raise ValueError(f"it holds a {type(dataset).__name__}, not an object")
        for key, needed in REQUIRED_KEYS.items():
            if not isinstance(dataset.get(key), list):
                raise ValueError(f"its {key!r} is missing or not a list")
            for n, entry in enumerate(dataset[key]):
                if not isinstance(entry, dict) or any(
                    k not in entry or (k.endswith("id") and not isinstance(entry[k], int))
                    for k in needed
                ):
                    raise ValueError(
                        f"{key}[{n}] needs the keys {needed} (ids integers). Received: {entry!r}"
                    )
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a COCO annotation file: {e}") from e
    return dataset


def _coco_index(dataset):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def annotation_problem(annotation, height, width, category_ids):
    """Why a COCO `annotation` cannot be trained on (a phrase), or None.

    Refused: no `bbox`, a bbox that is not 4 finite numbers, a width or height
    <= 0, an edge more than `BOX_TOLERANCE` pixels outside the image
    (`height` x `width`), a `category_id` not among `category_ids`.
    """
    category = annotation.get("category_id")
    if not isinstance(category, (int, float)) or category not in category_ids:
        return f"category_id {category!r} is not in 'categories'"
    if "bbox" not in annotation:
        return "it has no 'bbox'"
    bbox = annotation["bbox"]
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox {bbox} is not finite"
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has a width or height <= 0"
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return f"bbox {bbox} lies outside the image ({width}x{height} pixels)"
    return None


def _check_annotations(dataset, sizes, path, skip_invalid_annotations, masks=False):
    """The annotations of the images in `sizes` ({image id: (h, w)}) that pass
    `annotation_problem` (and with `masks`, whose `segmentation` decodes), and
    with `masks` their compressed RLEs (`instance_masks.segmentation_rle`); the
    others a `DataError` or (skip) a printed count."""
    category_ids = {c["id"] for c in dataset["categories"]}
    names = {i["id"]: i["file_name"] for i in dataset["images"]}
    valid, invalid, rles = [], [], []
    for ann in dataset["annotations"]:
        if ann["image_id"] not in sizes:  # an unlisted or skipped image: never read
            continue
        problem = annotation_problem(ann, *sizes[ann["image_id"]], category_ids)
        if problem is None and masks:
            if "segmentation" not in ann:
                problem = "it has no 'segmentation' (Mask R-CNN needs instance masks)"
            else:
                try:
                    rles.append(segmentation_rle(ann["segmentation"], *sizes[ann["image_id"]]))
                except ValueError as e:
                    problem = str(e)
        if problem is None:
            valid.append(ann)
        else:
            image = ann["image_id"]
            invalid.append(
                f"annotation {ann['id']} of image {names[image]!r} (id {image}): {problem}"
            )
    if invalid and not skip_invalid_annotations:
        raise DataError(
            f"{path}: {len(invalid)} of {len(valid) + len(invalid)} annotations are invalid: "
            f"{'; '.join(invalid[:3])}{' ...' if len(invalid) > 3 else ''}. Fix them, or skip "
            "them with skip_invalid_annotations=True (--skip-invalid-annotations)."
        )
    if invalid:
        print(f"Skipped {len(invalid)} invalid annotations of {path} (first: {invalid[0]})")
    return (valid, rles) if masks else valid


def _folder_source(root, split, skip_invalid_annotations=False, skip_unreadable=False, masks=False):
    import tensorflow as tf

    folder = os.path.join(root, split)
    path = os.path.join(folder, ANNOTATIONS)
    dataset = _read_coco(path, root, split)
    files = {}
    for image in sorted(dataset["images"], key=lambda i: i["id"]):
        name, image_id = image["file_name"], image["id"]
        candidates = [os.path.join(folder, name), os.path.join(folder, "images", name)]
        file = next((c for c in candidates if os.path.isfile(c)), None)
        if file is None:
            raise DataError(
                f"image {name!r} (id {image_id}) of {path} is missing: looked for "
                f"{candidates[0]} and {candidates[1]}"
            )
        files[image_id] = file
    readable = readable_images(list(files.values()), folder, skip_unreadable)
    sizes = {i: readable[f] for i, f in files.items() if f in readable}
    checked = _check_annotations(dataset, sizes, path, skip_invalid_annotations, masks)
    annotations, rles = checked if masks else (checked, [])
    rle_of = {id(a): r for a, r in zip(annotations, rles)}
    # The ground truth evaluation scores against: what was skipped is not in it. Sizes
    # are the decoded ones (pycocotools reads polygons at the image's height and width).
    images = [
        {**i, "height": sizes[i["id"]][0], "width": sizes[i["id"]][1]}
        for i in dataset["images"]
        if i["id"] in sizes
    ]
    coco = _coco_index({**dataset, "images": images, "annotations": annotations})
    category_ids = sorted(coco.getCatIds())
    index = {c: i for i, c in enumerate(category_ids)}
    names = [coco.cats[c].get("name", str(c)) for c in category_ids]
    boxes, labels, crowd, counts = [], [], [], []
    for image_id in sizes:
        anns = coco.imgToAnns.get(image_id, [])
        height, width = sizes[image_id]
        xywh = np.asarray([a["bbox"] for a in anns], "float32").reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)  # (n, 4)
        boxes.append(np.clip(xyxy, 0, [width, height, width, height]))  # within the tolerance
        labels.append(np.asarray([index[a["category_id"]] for a in anns], "int32"))
        crowd.append(np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool))
        if masks:
            counts.append([rle_of[id(a)] for a in anns])
    if not sizes:
        raise DataError(f"{path} lists no readable images")
    columns = {
        "file": [files[i] for i in sizes],
        "image_id": np.asarray(list(sizes), "int64"),
        "boxes": tf.ragged.constant(boxes, ragged_rank=1, inner_shape=(4,), dtype=tf.float32),
        "labels": tf.ragged.constant(labels, dtype=tf.int32),
        "crowd": tf.ragged.constant(crowd, dtype=tf.bool),
    }
    if masks:  # compressed RLEs, decoded per example (`instance_masks`)
        columns["rles"] = tf.RaggedTensor.from_row_lengths(
            tf.constant([c for image in counts for c in image], tf.string),
            [len(image) for image in counts],
        )
    dataset = tf.data.Dataset.from_tensor_slices(columns)

    def load(example):
        image = tf.io.decode_image(
            tf.io.read_file(example["file"]), channels=3, expand_animations=False
        )
        loaded = {
            "image": image,
            "boxes": tf.reshape(example["boxes"], (-1, 4)),
            "labels": example["labels"],
            "image_id": example["image_id"],
            "crowd": example["crowd"],
        }
        if masks:
            loaded["masks"] = tf_decode_masks(example["rles"], tf.shape(image)[:2])
        return loaded

    return Split(dataset.map(load), len(sizes), names, coco_gt=coco, category_ids=category_ids)


def digit_scene_source(split, num_scenes=2048, seed=0, masks=False):
    """Digit scenes (128x128, 1-4 digits of 16-32 pixels) as a detection `Split`.

    Args:
        split: "train" or "test" (disjoint scans).
        num_scenes: int. Training scenes; "test" has `max(num_scenes // 8, 64)`.
        seed: int. Layout seed of "train"; "test" uses `seed + 1`.
        masks: bool. Each digit's strokes as its instance mask: examples get
            "masks" (n, 128, 128) uint8 in box order, and the split a COCO
            ground truth with them (`coco_gt`, for `segm` evaluation).
    """
    import tensorflow as tf

    if split not in ("train", "test"):
        raise DataError(f"digit scenes have splits 'train' and 'test'. Received: split {split!r}")
    count = num_scenes if split == "train" else max(num_scenes // 8, 64)
    scenes = make_digit_scenes(
        count,
        (SCENE_SIDE, SCENE_SIDE),
        digits_per_scene=(1, 4),
        digit_scale=(2, 4),
        split=split,
        seed=seed if split == "train" else seed + 1,
    )
    columns = {
        "image": scenes["images"],
        "boxes": tf.ragged.constant(
            scenes["boxes"], ragged_rank=1, inner_shape=(4,), dtype=tf.float32
        ),
        "labels": tf.ragged.constant(scenes["labels"], dtype=tf.int32),
        "image_id": np.arange(1, count + 1, dtype="int64"),
    }
    if masks:
        columns["instances"] = scenes["instances"]
    dataset = tf.data.Dataset.from_tensor_slices(columns)

    def densify(example):
        labels = example["labels"]
        densified = {
            "image": example["image"],
            "boxes": tf.reshape(example["boxes"], (-1, 4)),
            "labels": labels,
            "image_id": example["image_id"],
            "crowd": tf.zeros_like(labels, tf.bool),
        }
        if masks:  # instance i + 1 is the i-th box's digit (`instance_masks`' order)
            ids = tf.range(1, tf.size(labels) + 1)[:, None, None]  # (n, 1, 1)
            instances = tf.cast(example["instances"], tf.int32)[None]  # (1, H, W)
            densified["masks"] = tf.cast(tf.equal(instances, ids), tf.uint8)  # (n, H, W)
        return densified

    coco_gt = None
    if masks:
        coco_gt = instance_ground_truth(
            [instance_masks(scenes, n) for n in range(count)],
            scenes["labels"],
            categories=range(len(CLASS_NAMES)),
        )
    return Split(dataset.map(densify), count, CLASS_NAMES, coco_gt=coco_gt)


def load_source(
    dataset, split, data_dir=None, skip_invalid_annotations=False, skip_unreadable=False,
    masks=False,
):  # fmt: skip
    """A detection `Split` from a COCO-JSON folder or a tfds name.

    A folder is checked whole before any training: every image is decoded
    once and every annotation checked (`annotation_problem`); what fails is a
    `DataError` that names the file, the image (name and id) and the
    annotation id, unless skipped (with a printed count; skipped images and
    annotations are left out of the ground truth too).

    Args:
        dataset: a folder (see the module docstring) or a tfds name
            ("coco/2017"). A path that is not a folder is refused.
        split: split name ("train", "val", "validation", ...).
        data_dir: tfds data directory.
        skip_invalid_annotations: bool. Folders: skip invalid annotations.
        skip_unreadable: bool. Folders: skip images that do not decode.
        masks: bool. Instance masks too (Mask R-CNN): every annotation's
            `segmentation` (polygons or RLE) is checked when loaded (one
            without is invalid) and examples get "masks" (n, H, W) uint8.
            tfds' coco/2017 has no masks: refused (`MASKLESS_TFDS`).
    """
    if os.path.isdir(dataset):
        return _folder_source(dataset, split, skip_invalid_annotations, skip_unreadable, masks)
    if dataset.startswith((".", "/", "~")) or os.path.isabs(dataset):
        raise DataError(f"--dataset {dataset} is not a folder")
    if masks:
        raise DataError(MASKLESS_TFDS.format(name=dataset))
    return _tfds_source(dataset, split, data_dir)


def canvas_side(max_side):
    """The square canvas every image is padded to: `max_side` rounded up to 32."""
    return int(math.ceil(max_side / 32) * 32)


def resize(image, boxes, short_side, max_side):
    """Keeps the aspect ratio: shorter side `short_side`, longer at most `max_side`.

    Returns the resized image, the boxes scaled with it, and the scale.
    """
    import tensorflow as tf

    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(
        tf.cast(short_side, tf.float32) / tf.reduce_min(size), max_side / tf.reduce_max(size)
    )
    new = tf.cast(tf.round(size * scale), tf.int32)
    image = tf.image.resize(image, new, method="bilinear")  # (h', w', 3)
    return image, boxes * scale, scale


def pad_to_square(image, side):
    """`image` (h, w, 3) padded with zeros at the bottom/right to (side, side, 3)."""
    import tensorflow as tf

    shape = tf.shape(image)
    return tf.pad(image, [[0, side - shape[0]], [0, side - shape[1]], [0, 0]])


def train_dataset(
    source,
    batch_size,
    side,
    min_side=(800, 800),
    max_side=1333,
    max_boxes=100,
    resize_images=True,
    flip=True,
    seed=0,
    initial_step=0,
    masks=False,
):
    """Batches `(images (B, side, side, 3), {"boxes" (B, M, 4), "labels" (B, M)})`,
    with `masks` also `"masks" (B, M, side, side)` uint8.

    A function of the seed and the step only: shuffled with a fixed seed (the
    same order every run), augmented with randomness drawn from (seed,
    example position), so resuming at `initial_step` skips exactly the
    batches already trained on. Crowd boxes are dropped, at most `max_boxes`
    kept (`M`), padded with label -1.

    Args:
        source: a detection `Split`.
        batch_size: int.
        side: int. The square canvas (`canvas_side`).
        min_side: (low, high). Shorter side, drawn per image in [low, high].
        max_side: int. Longer side at most.
        max_boxes: int. Boxes per image.
        resize_images: bool. False keeps the images' size (digit scenes).
        flip: bool. Random horizontal flips.
        seed: int. Data order and augmentation.
        initial_step: int. Batches to skip (a resumed run's first step).
        masks: bool. The source's instance masks, resized (nearest), flipped
            and padded with their image (Mask R-CNN's targets). They take
            B x M x side^2 bytes a batch: lower `max_boxes` if that is too much.
    """
    import tensorflow as tf

    low, high = min_side
    buffer = min(source.num_examples or 1000, 1000)
    data = source.dataset.repeat().shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    data = data.enumerate().skip(initial_step * batch_size)

    def prepare(position, example):
        keep = tf.logical_not(example["crowd"])
        boxes = tf.boolean_mask(example["boxes"], keep)[:max_boxes]
        labels = tf.boolean_mask(example["labels"], keep)[:max_boxes]
        if masks:
            instances = tf.boolean_mask(example["masks"], keep)[:max_boxes]  # (n, H, W)
        image = tf.cast(example["image"], tf.float32)
        draw = tf.random.stateless_uniform([2], seed=[seed, position])
        if resize_images:
            short = low + tf.cast(tf.floor(draw[0] * (high - low + 1)), tf.int32)
            image, boxes, _ = resize(image, boxes, tf.minimum(short, high), max_side)
            if masks:
                instances = resize_masks(instances, tf.shape(image)[:2])
        if flip and draw[1] < 0.5:
            width = tf.cast(tf.shape(image)[1], tf.float32)
            image = tf.reverse(image, axis=[1])
            boxes = tf.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1
            )
        image = normalize_images(pad_to_square(image, side))
        image = tf.ensure_shape(image, (side, side, 3))
        if not masks:
            return image, {"boxes": boxes, "labels": labels}
        if flip:  # as the image above
            instances = tf.cond(draw[1] < 0.5, lambda: flip_masks(instances), lambda: instances)
        return image, {"boxes": boxes, "labels": labels, "masks": pad_masks(instances, side)}

    data = data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    shapes = {"boxes": (max_boxes, 4), "labels": (max_boxes,)}
    padding = {"boxes": 0.0, "labels": -1}
    if masks:
        shapes["masks"], padding["masks"] = (max_boxes, side, side), tf.constant(0, tf.uint8)
    data = data.padded_batch(
        batch_size,
        padded_shapes=((side, side, 3), shapes),
        padding_values=(0.0, padding),
        drop_remainder=True,
    )
    return data.prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, side, short_side=800, max_side=1333, resize_images=True, limit=None):
    """Per example: the normalised padded "image" (side, side, 3), its "scale",
    "image_id", original "size" (height, width), "boxes", "labels", "crowd".

    Args:
        source: a detection `Split`.
        side: int. The square canvas (`canvas_side`).
        short_side: int. Shorter side of the resized image.
        max_side: int. Longer side at most.
        resize_images: bool. False keeps the images' size (digit scenes).
        limit: int or None. Only the first `limit` examples.
    """
    import tensorflow as tf

    data = source.dataset if limit is None else source.dataset.take(limit)

    def prepare(example):
        image = tf.cast(example["image"], tf.float32)
        height_width = tf.shape(image)[:2]
        scale = tf.constant(1.0)
        if resize_images:
            image, _, scale = resize(image, example["boxes"], short_side, max_side)
        image = tf.ensure_shape(normalize_images(pad_to_square(image, side)), (side, side, 3))
        return {
            "image": image,
            "scale": scale,
            "image_id": example["image_id"],
            "size": height_width,
            "boxes": example["boxes"],
            "labels": example["labels"],
            "crowd": example["crowd"],
        }

    return data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
