"""Train RetinaNet on a SepViT backbone (COCO, a COCO-JSON folder, or digit scenes), paper Sec. 4.3.

    python examples/train_detection.py --dataset coco/2017 --data-dir ~/tensorflow_datasets \
        --backbone sepvit_tiny_dense --out runs/retinanet_t
    python examples/train_detection.py --dataset /data/my_coco_folder --out runs/det
    python examples/train_detection.py --digit-scenes --out runs/det_digits   # offline, CPU
    python examples/train_detection.py ... --init-from sepvit_t.keras   # from a classifier
    python examples/train_detection.py ... --resume          # continue where it stopped
    python examples/train_detection.py ... --overwrite       # start --out over (deletes its run)

Defaults are the paper's RetinaNet 1x (Sec. 4.3, mmdetection's setting it
follows): keras-hub's RetinaNet (FPN on P3-P5, P6/P7, focal loss), AdamW lr
1e-4, weight decay 1e-4 (the paper: 1e-3 for SepViT-T, 1e-4 for S), batch 16,
12 epochs, 500 warm-up iterations, lr x0.1 at epochs 8 and 11, images resized
to a shorter side of 800 (longer side at most 1333), horizontal flips. The
paper's "3x + MS": --epochs 36 --lr-steps 27,33 --min-side 480,800.

Data:
  --dataset coco/2017      tfds (train / validation splits)
  --dataset DIR            DIR/<split>/annotations.json (COCO JSON) with the
                           images at DIR/<split>/<file_name> or
                           DIR/<split>/images/<file_name>; splits train / val
  --digit-scenes           keras_sepvit.digit_scenes (128x128, train/test scans)

Images are padded bottom/right to a square canvas (a multiple of 32: 1344
for --max-side 1333), so every batch has one static shape. Evaluation after
every epoch: COCO box mAP through pycocotools (keras_sepvit.tasks.coco_eval),
logged as val_map / val_map50; the best val_map is kept. An --out that
already holds a run is refused unless --resume or --overwrite is given;
every epoch commits one verified checkpoint folder (keras_sepvit.training).
The data order is a function of --seed and the step, so a resumed run sees
the batches the uninterrupted one would.
"""

import argparse
import json
import math
import os
import sys

# Before TensorFlow loads: its C++ log lines (keras_sepvit.tf_logging says why).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ANNOTATIONS = "annotations.json"


def _int_pair(text, flag):
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 32 or values != sorted(values):
        raise SystemExit(
            f"error: {flag} must be a side >= 32 or 'min,max' (ascending). Received: {flag} {text}"
        )
    return values[0], values[-1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--dataset", default="coco/2017", help="tfds name, or a COCO-JSON folder (see above)")
    a("--digit-scenes", action="store_true", help="train on keras_sepvit.digit_scenes (offline)")
    a("--train-split", default=None, help="default: train")
    a("--val-split", default=None, help="default: validation (tfds), val (folder), test (scenes)")
    a("--data-dir", default=None, help="tfds data directory")
    a(
        "--backbone",
        default="sepvit_tiny_dense",
        help="SepViTBackbone preset (sepvit_lite_dense, sepvit_tiny_dense, ...), 'mit_b0', or a "
        "keras-hub preset folder",
    )
    a(
        "--init-from",
        default=None,
        help="SepViT classifier for the backbone (.keras, .weights.h5, or the authors' .pth/.npz)",
    )
    a("--out", default="runs/detection", help="checkpoints and log")
    a("--resume", action="store_true", help="continue from --out (weights, optimizer, epoch)")
    a("--overwrite", action="store_true", help="start over in an --out that holds a run")
    a("--epochs", type=int, default=12, help="training epochs (1x)")
    a("--lr-steps", default="8,11", help="epochs after which the lr is multiplied by 0.1")
    a("--batch-size", type=int, default=16, help="batch size")
    a("--lr", type=float, default=1e-4, help="AdamW learning rate")
    a("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    a("--warmup-steps", type=int, default=500, help="linear warm-up iterations")
    a("--clip-norm", type=float, default=0.0, help="global gradient norm clip (0 = off)")
    a("--min-side", default="800", help="shorter side, or 'min,max' for multi-scale training")
    a("--max-side", type=int, default=1333, help="longer side at most")
    a("--no-flip", action="store_true", help="no random horizontal flips")
    a("--max-boxes", type=int, default=100, help="boxes per training image (more are dropped)")
    a("--anchor-size", type=float, default=4.0, help="anchor side / stride")
    a("--head-conv-layers", type=int, default=4, help="convs in each head")
    a("--scenes", type=int, default=2048, help="--digit-scenes: training scenes")
    a("--seed", type=int, default=0, help="random seed (weights, data order, augmentation)")
    a("--steps-per-epoch", type=int, default=None, help="limit steps (smoke tests)")
    a("--val-images", type=int, default=None, help="evaluate on the first N validation images")
    a("--eval-batch-size", type=int, default=8, help="evaluation batch size")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out, --overwrite deletes it: pass one")
    for flag in ("epochs", "batch_size", "max_boxes", "eval_batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1. Received: {getattr(args, flag)}")
    args.min_side = _int_pair(args.min_side, "--min-side")
    if args.max_side < args.min_side[1]:
        p.error(
            f"--max-side must be at least the shorter side {args.min_side[1]}. "
            f"Received: --max-side {args.max_side}"
        )
    try:
        args.lr_steps = sorted(int(v) for v in args.lr_steps.split(",") if v.strip())
    except ValueError:
        p.error(f"--lr-steps must be comma-separated epochs. Received: --lr-steps {args.lr_steps}")
    return args


# --- Data sources: each yields dicts image (H, W, 3) uint8, boxes (n, 4) xyxy
# pixels, labels (n,) contiguous class ids, image_id, crowd (n,) bool. -------


class Source:
    """A split: a tf.data of examples, its size, classes, and its COCO ground truth."""

    def __init__(self, dataset, size, class_names, coco_gt=None, category_ids=None):
        self.dataset = dataset
        self.size = size
        self.class_names = list(class_names)
        self.coco_gt = coco_gt  # None: built from the examples when evaluating
        self.category_ids = category_ids  # contiguous label -> COCO category id


def _tfds_source(args, split):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(args.dataset, data_dir=args.data_dir)
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:  # tfds raises many types for a missing/unknown dataset
        raise SystemExit(
            f"error: cannot load tfds dataset {args.dataset!r} split {split!r}: {e}"
        ) from e
    features = builder.info.features
    if "objects" not in features or "bbox" not in features["objects"]:
        raise SystemExit(
            f"error: tfds dataset {args.dataset!r} has no objects/bbox feature: it is not a "
            "detection dataset (use coco/2017, a COCO-JSON folder or --digit-scenes)"
        )

    def convert(example):
        image = example["image"]
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        ymin, xmin, ymax, xmax = tf.unstack(example["objects"]["bbox"], 4, axis=-1)
        boxes = tf.stack([xmin * size[1], ymin * size[0], xmax * size[1], ymax * size[0]], -1)
        objects = example["objects"]
        crowd = objects["is_crowd"] if "is_crowd" in objects else tf.zeros_like(objects["label"])
        boxes = tf.reshape(boxes, (-1, 4))
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
    return Source(dataset.map(convert), size, names)


def _folder_source(args, split):
    import numpy as np
    import tensorflow as tf
    from pycocotools.coco import COCO

    folder = os.path.join(args.dataset, split)
    path = os.path.join(folder, ANNOTATIONS)
    if not os.path.isfile(path):
        raise SystemExit(
            f"error: {path} not found: a COCO-JSON folder holds <split>/{ANNOTATIONS} and the "
            f"images. Received: --dataset {args.dataset} (split {split!r})"
        )
    try:
        with open(path) as f:
            dataset = json.load(f)
        for key in ("images", "annotations", "categories"):
            if not isinstance(dataset.get(key), list):
                raise ValueError(f"its {key!r} is missing or not a list")
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a COCO annotation file: {e}") from e
    coco = COCO()
    coco.dataset = dataset
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    category_ids = sorted(coco.getCatIds())
    index = {c: i for i, c in enumerate(category_ids)}
    names = [coco.cats[c].get("name", str(c)) for c in category_ids]
    files, boxes, labels, crowd, ids = [], [], [], [], []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        name = info["file_name"]
        candidates = [os.path.join(folder, name), os.path.join(folder, "images", name)]
        file = next((c for c in candidates if os.path.isfile(c)), None)
        if file is None:
            raise SystemExit(
                f"error: image {name!r} (id {image_id}) of {path} is missing: looked for "
                f"{candidates[0]} and {candidates[1]}"
            )
        anns = coco.imgToAnns.get(image_id, [])
        for ann in anns:
            if ann["category_id"] not in index:
                raise SystemExit(
                    f"error: {path}: annotation {ann.get('id')} has category_id "
                    f"{ann['category_id']}, which is not in 'categories'"
                )
        xywh = np.asarray([a["bbox"] for a in anns], "float32").reshape(-1, 4)
        files.append(file)
        boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        labels.append(np.asarray([index[a["category_id"]] for a in anns], "int32"))
        crowd.append(np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool))
        ids.append(image_id)
    if not files:
        raise SystemExit(f"error: {path} lists no images")
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            "file": files,
            "image_id": np.asarray(ids, "int64"),
            "boxes": tf.ragged.constant(boxes, ragged_rank=1, inner_shape=(4,), dtype=tf.float32),
            "labels": tf.ragged.constant(labels, dtype=tf.int32),
            "crowd": tf.ragged.constant(crowd, dtype=tf.bool),
        }
    )

    def load(example):
        image = tf.io.decode_image(
            tf.io.read_file(example["file"]), channels=3, expand_animations=False
        )
        return {
            "image": image,
            "boxes": tf.reshape(example["boxes"], (-1, 4)),
            "labels": example["labels"],
            "image_id": example["image_id"],
            "crowd": example["crowd"],
        }

    return Source(dataset.map(load), len(files), names, coco_gt=coco, category_ids=category_ids)


def _scenes_source(args, split):
    import numpy as np
    import tensorflow as tf

    from keras_sepvit.digit_scenes import CLASS_NAMES, make_digit_scenes

    count = args.scenes if split == "train" else max(args.scenes // 8, 64)
    scenes = make_digit_scenes(
        count,
        (128, 128),
        digits_per_scene=(1, 4),
        digit_scale=(2, 4),
        split=split,
        seed=args.seed if split == "train" else args.seed + 1,
    )
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            "image": scenes["images"],
            "boxes": tf.ragged.constant(
                scenes["boxes"], ragged_rank=1, inner_shape=(4,), dtype=tf.float32
            ),
            "labels": tf.ragged.constant(scenes["labels"], dtype=tf.int32),
            "image_id": np.arange(1, count + 1, dtype="int64"),
        }
    )

    def densify(example):
        labels = example["labels"]
        return {
            "image": example["image"],
            "boxes": tf.reshape(example["boxes"], (-1, 4)),
            "labels": labels,
            "image_id": example["image_id"],
            "crowd": tf.zeros_like(labels, tf.bool),
        }

    return Source(dataset.map(densify), count, CLASS_NAMES)


def load_source(args, split):
    if args.digit_scenes:
        if split not in ("train", "test"):
            raise SystemExit(
                f"error: digit scenes have splits 'train' and 'test'. Received: split {split!r}"
            )
        return _scenes_source(args, split)
    if os.path.isdir(args.dataset):
        return _folder_source(args, split)
    if args.dataset.startswith((".", "/", "~")) or os.path.isabs(args.dataset):
        raise SystemExit(f"error: --dataset {args.dataset} is not a folder")
    return _tfds_source(args, split)


# --- Pipelines ---------------------------------------------------------------


def canvas_side(args):
    """The square canvas every image is padded to: max side rounded up to 32."""
    if args.digit_scenes:
        return 128
    return int(math.ceil(args.max_side / 32) * 32)


def _resize(image, boxes, short_side, max_side):
    """Keeps the aspect ratio: shorter side `short_side`, longer at most `max_side`."""
    import tensorflow as tf

    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(
        tf.cast(short_side, tf.float32) / tf.reduce_min(size), max_side / tf.reduce_max(size)
    )
    new = tf.cast(tf.round(size * scale), tf.int32)
    image = tf.image.resize(image, new, method="bilinear")
    return image, boxes * scale, scale


def _pad(image, side):
    import tensorflow as tf

    shape = tf.shape(image)
    return tf.pad(image, [[0, side - shape[0]], [0, side - shape[1]], [0, 0]])


def _normalize(image):
    from keras_sepvit.model import IMAGENET_MEAN, IMAGENET_STD

    mean = [255.0 * m for m in IMAGENET_MEAN]
    std = [255.0 * s for s in IMAGENET_STD]
    return (image - mean) / std


def train_dataset(source, args, initial_step=0):
    """Batches (images, {"boxes", "labels"}): a function of the seed and the step only.

    Shuffled with a fixed seed (the same order every run), augmented with
    randomness drawn from (seed, example position), so resuming at
    `initial_step` skips exactly the batches already trained on.
    """
    import tensorflow as tf

    side = canvas_side(args)
    low, high = args.min_side
    flip = not args.no_flip and not args.digit_scenes
    buffer = min(source.size or 1000, 1000)
    data = source.dataset.repeat().shuffle(buffer, seed=args.seed, reshuffle_each_iteration=True)
    data = data.enumerate().skip(initial_step * args.batch_size)

    def prepare(position, example):
        keep = tf.logical_not(example["crowd"])
        boxes = tf.boolean_mask(example["boxes"], keep)[: args.max_boxes]
        labels = tf.boolean_mask(example["labels"], keep)[: args.max_boxes]
        image = tf.cast(example["image"], tf.float32)
        draw = tf.random.stateless_uniform([2], seed=[args.seed, position])
        if not args.digit_scenes:
            short = low + tf.cast(tf.floor(draw[0] * (high - low + 1)), tf.int32)
            image, boxes, _ = _resize(image, boxes, tf.minimum(short, high), args.max_side)
        if flip and draw[1] < 0.5:
            width = tf.cast(tf.shape(image)[1], tf.float32)
            image = tf.reverse(image, axis=[1])
            boxes = tf.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1
            )
        image = _normalize(_pad(image, side))
        image = tf.ensure_shape(image, (side, side, 3))
        return image, {"boxes": boxes, "labels": labels}

    data = data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.padded_batch(
        args.batch_size,
        padded_shapes=(
            (side, side, 3),
            {"boxes": (args.max_boxes, 4), "labels": (args.max_boxes,)},
        ),
        padding_values=(0.0, {"boxes": 0.0, "labels": -1}),
        drop_remainder=True,
    )
    return data.prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, args):
    """(normalized padded image, scale, image_id, original height, width) per example."""
    import tensorflow as tf

    side = canvas_side(args)
    data = source.dataset
    if args.val_images is not None:
        data = data.take(args.val_images)

    def prepare(example):
        image = tf.cast(example["image"], tf.float32)
        height_width = tf.shape(image)[:2]
        scale = tf.constant(1.0)
        if not args.digit_scenes:
            image, _, scale = _resize(image, example["boxes"], args.min_side[1], args.max_side)
        image = tf.ensure_shape(_normalize(_pad(image, side)), (side, side, 3))
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


def np_int64(value):
    import numpy as np

    return np.int64(value)


def evaluate(detector, source, args, verbose=False):
    """COCO box metrics of `detector` on `source` (pycocotools, keras_sepvit.tasks.coco_eval)."""
    import numpy as np

    from keras_sepvit.tasks import coco_eval
    from keras_sepvit.tasks.retinanet import detect

    results, gt = [], {"boxes": [], "labels": [], "sizes": [], "ids": [], "crowd": []}
    batch = args.eval_batch_size
    padding = {
        "image": 0.0, "scale": 0.0, "image_id": np_int64(0), "size": 0,
        "boxes": 0.0, "labels": -1, "crowd": False,
    }  # fmt: skip
    data = eval_dataset(source, args).padded_batch(batch, padding_values=padding)
    for examples in data.as_numpy_iterator():
        found = detect(detector, examples["image"], batch_size=batch)
        for k in range(len(examples["image"])):
            height, width = (int(s) for s in examples["size"][k])
            boxes = found["boxes"][k] / examples["scale"][k]
            boxes = np.clip(boxes, 0, [width, height, width, height])
            labels = found["labels"][k]
            if source.category_ids is not None:
                labels = np.where(labels >= 0, np.take(source.category_ids, labels), -1)
            image_id = int(examples["image_id"][k])
            results += coco_eval.coco_results(
                [boxes], [found["confidence"][k]], [labels], [image_id]
            )
            gt["ids"].append(image_id)
            gt["sizes"].append((height, width))
            gt["boxes"].append(examples["boxes"][k])
            gt["labels"].append(examples["labels"][k])
            gt["crowd"].append(examples["crowd"][k])
    # padded_batch pads boxes with label -1: coco_ground_truth skips those rows.
    if source.coco_gt is not None:
        coco_gt = source.coco_gt
        coco_gt = _subset(coco_gt, gt["ids"])
    else:
        coco_gt = coco_eval.coco_ground_truth(
            gt["boxes"],
            gt["labels"],
            gt["sizes"],
            image_ids=gt["ids"],
            iscrowd=gt["crowd"],
            categories=range(len(source.class_names)),
        )
    return coco_eval.coco_evaluate(coco_gt, results, verbose=verbose)


def _subset(coco, image_ids):
    """The ground truth of `image_ids` only (evaluating the first N images)."""
    if set(image_ids) == set(coco.getImgIds()):
        return coco
    from keras_sepvit.tasks.coco_eval import _pycocotools

    COCO, _ = _pycocotools()
    keep = set(image_ids)
    subset = COCO()
    subset.dataset = {
        "images": [i for i in coco.dataset["images"] if i["id"] in keep],
        "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] in keep],
        "categories": coco.dataset["categories"],
    }
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        subset.createIndex()
    return subset


# --- Model and training ------------------------------------------------------


def build_detector(args, num_classes):
    from keras_sepvit.tasks.retinanet import sepvit_retinanet

    side = canvas_side(args)
    if args.backbone == "mit_b0":
        from keras_sepvit.tasks.detection_demo import make_backbone

        backbone = make_backbone("mit_b0", (side, side), args.seed)
    elif args.backbone.startswith("sepvit") and not os.path.exists(args.backbone):
        from keras_sepvit.hub import SepViTBackbone

        try:
            backbone = SepViTBackbone.from_preset(args.backbone, image_shape=(side, side, 3))
        except ValueError as e:
            raise SystemExit(f"error: --backbone {args.backbone}: {e}") from e
    else:  # a keras-hub preset name or folder
        import keras_hub

        backbone = keras_hub.models.Backbone.from_preset(args.backbone)
    if args.init_from:  # the paper starts from an ImageNet classifier
        from keras_sepvit.dense import load_classifier_weights

        if not hasattr(backbone, "dense"):
            raise SystemExit(
                f"error: --init-from needs a SepViT backbone. Received: --backbone {args.backbone}"
            )
        try:
            load_classifier_weights(backbone, args.init_from)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --init-from {args.init_from}: {e}") from e
    return sepvit_retinanet(
        backbone,
        num_classes,
        bounding_box_format="xyxy",
        anchor_size=args.anchor_size,
        head_conv_layers=args.head_conv_layers,
        image_shape=(side, side, 3),
        seed=args.seed,
    )


def steps_per_epoch(args, source):
    from keras_sepvit import training

    try:
        return training.epoch_steps(
            source.size, args.batch_size, args.steps_per_epoch, where=f" of {args.dataset!r}"
        )
    except training.TrainingError as e:
        raise SystemExit(f"error: {e}") from e


def make_evaluation_callback(detector_source, args):
    import keras

    class COCOEvaluation(keras.callbacks.Callback):
        """Adds val_map, val_map50 (pycocotools) to the epoch's logs, before checkpoints."""

        def on_epoch_end(self, epoch, logs=None):
            metrics = evaluate(self.model, detector_source, args)
            if logs is not None:
                logs["val_map"] = metrics["map"]
                logs["val_map50"] = metrics["map50"]
            print(
                f"Epoch {epoch + 1}: COCO mAP {metrics['map']:.4f}, mAP@0.5 "
                f"{metrics['map50']:.4f} on {args.val_split!r}",
                flush=True,
            )

    return COCOEvaluation()


def main(argv=None):
    args = parse_args(argv)
    from keras_sepvit.tf_logging import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from keras_sepvit import training
    from keras_sepvit.tasks.retinanet import WarmupStepDecay

    if args.digit_scenes:
        args.dataset = "digit-scenes"
    tfds_name = not args.digit_scenes and not os.path.isdir(args.dataset)
    args.train_split = args.train_split or "train"
    args.val_split = args.val_split or (
        "test" if args.digit_scenes else "validation" if tfds_name else "val"
    )
    try:  # before any work: an existing run needs --resume/--overwrite; a damaged one is refused
        training.check_run(args.out, args.resume, args.overwrite)
    except training.TrainingError as e:
        raise SystemExit(f"error: {e}") from e
    keras.utils.set_random_seed(args.seed)
    train = load_source(args, args.train_split)
    val = load_source(args, args.val_split)
    if val.class_names != train.class_names:
        raise SystemExit(
            f"error: the {args.train_split!r} and {args.val_split!r} splits have different "
            f"categories ({len(train.class_names)} and {len(val.class_names)})"
        )
    steps = steps_per_epoch(args, train)
    if args.lr_steps and max(args.lr_steps) >= args.epochs:
        print(f"Note: --lr-steps {args.lr_steps} reach past --epochs {args.epochs}.")
    detector = build_detector(args, len(train.class_names))
    optimizer = keras.optimizers.AdamW(
        WarmupStepDecay(args.lr, args.warmup_steps, [e * steps for e in args.lr_steps]),
        weight_decay=args.weight_decay,
        global_clipnorm=args.clip_norm or None,
    )
    detector.compile(optimizer=optimizer)
    try:
        initial_epoch = training.prepare_run(detector, args.out, args.resume, args.overwrite)
    except training.TrainingError as e:
        raise SystemExit(f"error: {e}") from e
    if initial_epoch >= args.epochs:
        print(f"Nothing to do: the run in {args.out} already trained {initial_epoch} epochs.")
    print(
        f"Training RetinaNet on {args.backbone} ({detector.count_params():,} parameters): "
        f"{args.dataset} {args.train_split!r}, {steps} steps x {args.epochs} epochs, batch "
        f"{args.batch_size}, canvas {canvas_side(args)}",
        flush=True,
    )
    callbacks = [
        make_evaluation_callback(val, args),
        training.AtomicCheckpoint(args.out, monitor="val_map"),
    ]
    try:
        detector.fit(
            train_dataset(train, args, initial_step=initial_epoch * steps),
            epochs=args.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=2,
        )
    except training.TrainingError as e:
        raise SystemExit(f"error: {e}") from e
    state = training.read_state(args.out)
    summary = training.run_summary(state, args.out, args.epochs, also=("val_map50",))
    if summary:
        print(summary)
    return state


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
