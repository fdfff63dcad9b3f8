"""Digit-scenes detection demo: RetinaNet on SepViT-Lite vs. MiT-B0, same budget.

`train_and_evaluate_detector` trains keras-hub's RetinaNet (through
`sepvit_retinanet`) from random initialisation on digit scenes
(`keras_sepvit.data.digit_scenes`) and scores it with COCO mAP (pycocotools) on
held-out scenes; `draw_detections` draws the result on a matplotlib axis.

Example:

```python
from keras_sepvit.data.digit_scenes import make_digit_scenes
from keras_sepvit.demos.detection import SCENES, train_and_evaluate_detector

train = make_digit_scenes(2400, **SCENES, split="train", seed=0)
test = make_digit_scenes(500, **SCENES, split="test", seed=1)
result = train_and_evaluate_detector("sepvit_lite", train, test)
print(result["map50"], result["map"], result["seconds"])
```

Or both backbones, the table, a picture and `report.json`:

    python -m keras_sepvit.demos.detection --out runs/detection_demo [--export]

(`--export`: the first backbone's trained detector as float32 and int8 TFLite /
ONNX files in `--out/files`, scored on the held-out scenes:
`keras_sepvit.demos.edge`.)
"""

import time

import keras
import numpy as np

from keras_sepvit.data.digit_scenes import CLASS_NAMES, NUM_CLASSES, make_digit_scenes, pad_boxes
from keras_sepvit.demos.backbones import build_backbone
from keras_sepvit.optimizer_build import build_optimizer
from keras_sepvit.preprocessing import normalize_images

BACKBONES = ("sepvit_lite", "mit_b0")
# Demo defaults, tuned on training scenes only (see the README): digits are
# 8-32 px, so anchors of 2x the stride (16..25 px at P3, 32..50 at P4).
ANCHOR_SIZE = 2.0
HEAD_CONV_LAYERS = 1
# The demo's scenes: 64x64 canvases, 1-3 digits of 16-24 px (the 8x8 scans x2-3).
SCENES = {"image_size": (64, 64), "digits_per_scene": (1, 3), "digit_scale": (2, 3)}


def _inputs(images):
    return normalize_images(np.asarray(images, "float32"))


def _training_batches(images, targets, batch_size, seed):
    """Shuffled (seeded, reshuffled each epoch) full batches, repeated."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((images, targets)).repeat()
    data = data.shuffle(min(len(images), 4096), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size, drop_remainder=True).prefetch(2)


def predict_detections(detector, images, batch_size=32):
    """Detections (`retinanet.detect`) on [0, 255] scene images -> numpy dict."""
    from keras_sepvit.tasks.retinanet import detect

    return detect(detector, _inputs(images), batch_size=batch_size)


def evaluate_detector(detector, scenes, batch_size=32):
    """COCO metrics (`coco_eval.STAT_NAMES`) of `detector` on digit scenes."""
    from keras_sepvit.tasks.coco_eval import evaluate_detections

    found = predict_detections(detector, scenes["images"], batch_size)
    height, width = scenes["images"].shape[1:3]
    return evaluate_detections(
        scenes["boxes"],
        scenes["labels"],
        found["boxes"],
        found["confidence"],
        found["labels"],
        [(height, width)] * len(scenes["images"]),
        categories=range(NUM_CLASSES),
    )


def train_and_evaluate_detector(
    backbone_name,
    train_scenes,
    test_scenes,
    epochs=4,
    batch_size=16,
    learning_rate=1e-3,
    weight_decay=1e-4,
    warmup_epochs=1,
    anchor_size=ANCHOR_SIZE,
    head_conv_layers=HEAD_CONV_LAYERS,
    seed=0,
    verbose=2,
):
    """Trains RetinaNet on `backbone_name` (random init) and scores it on `test_scenes`.

    Both backbones get the same detector (FPN P3-P7, heads, anchors), data,
    optimiser and schedule: AdamW (weight decay 1e-4 as the paper's
    RetinaNet), linear warm-up then cosine decay, global norm clip 5.

    Args:
        backbone_name: "sepvit_lite" (the dense SepViT-Lite) or "mit_b0".
        train_scenes: dict of `make_digit_scenes(..., split="train")`.
        test_scenes: dict of `make_digit_scenes(..., split="test")`: scored only.
        epochs: int. Passes over `train_scenes`. Defaults to 4.
        batch_size: int. Defaults to 16.
        learning_rate: float. Peak learning rate. Defaults to 1e-3 (from
            scratch; the paper fine-tunes from ImageNet at 1e-4).
        weight_decay: float. Defaults to 1e-4.
        warmup_epochs: int. Linear warm-up. Defaults to 1.
        anchor_size: float. Anchor side / stride. Defaults to 2.
        head_conv_layers: int. Convs in each head before its output.
            Defaults to 1 (RetinaNet has 4; 1 keeps the demo in CPU minutes).
        seed: int. Seed of the weights and the data order.
        verbose: int. `model.fit` verbosity. Defaults to 2 (a line per epoch).

    Returns:
        dict: "map50" (COCO AP@0.5) and "map" (AP@[.5:.95]) on `test_scenes`,
        "metrics" (all twelve COCO numbers), "seconds" (training wall time),
        "cpu_seconds" (CPU time of the process while training, all threads),
        "eval_seconds", "params", "history" (losses per epoch) and "model"
        (the trained `RetinaNetObjectDetector`).
    """
    from keras_sepvit.tasks.retinanet import sepvit_retinanet
    from keras_sepvit.training import warmup_cosine_schedule

    images = np.asarray(train_scenes["images"])
    if images.ndim != 4 or len(images) < batch_size:
        raise ValueError(
            "`train_scenes` must hold (N, H, W, 3) images with N >= batch_size. Received: "
            f"images of shape {images.shape}, batch_size={batch_size}"
        )
    if test_scenes["images"].shape[1:] != images.shape[1:]:
        raise ValueError(
            "Train and test scenes must have the same image size. Received: "
            f"{images.shape[1:]} and {test_scenes['images'].shape[1:]}"
        )
    image_size = images.shape[1:3]
    backbone = build_backbone(backbone_name, image_size, seed=seed)
    detector = sepvit_retinanet(
        backbone,
        NUM_CLASSES,
        bounding_box_format="xyxy",
        anchor_size=anchor_size,
        head_conv_layers=head_conv_layers,
        seed=seed,
    )
    steps = len(images) // batch_size
    schedule = warmup_cosine_schedule(
        learning_rate,
        total_steps=steps * epochs,
        warmup_steps=steps * warmup_epochs,
        min_learning_rate=learning_rate / 100,
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, global_clipnorm=5.0)
    detector.compile(optimizer=optimizer)
    most = max(len(b) for b in train_scenes["boxes"])
    targets = pad_boxes(train_scenes["boxes"], train_scenes["labels"], max_boxes=most)
    data = _training_batches(_inputs(images), targets, batch_size, seed)
    build_optimizer(detector)  # one trace of the train step, not two
    start, cpu_start = time.perf_counter(), time.process_time()
    history = detector.fit(
        data, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=verbose
    )
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    start = time.perf_counter()
    metrics = evaluate_detector(detector, test_scenes)
    return {
        "backbone": backbone_name,
        "map50": metrics["map50"],
        "map": metrics["map"],
        "metrics": metrics,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "eval_seconds": time.perf_counter() - start,
        "params": detector.count_params(),
        "backbone_params": backbone.count_params(),
        "history": history.history,
        "model": detector,
    }


def draw_detections(
    ax, image, boxes, labels, scores=None, score_threshold=0.5, class_names=CLASS_NAMES
):
    """Draws an image and its boxes (xyxy pixels) with "class score" captions.

    Args:
        ax: a matplotlib axis.
        image: (H, W, 3) uint8 image.
        boxes: (n, 4) boxes, xyxy pixels (padding rows with label < 0 skipped).
        labels: (n,) class ids.
        scores: (n,) confidences, or None for ground truth (drawn dashed).
        score_threshold: float. Boxes scoring below it are not drawn.
        class_names: names indexed by class id. Defaults to "0".."9".
    """
    from matplotlib.patches import Rectangle

    ax.imshow(np.asarray(image, "uint8"))
    ax.set_axis_off()
    boxes = np.asarray(boxes, "float32").reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        if labels[k] < 0 or (scores is not None and scores[k] < score_threshold):
            continue
        colour = "lime" if scores is not None else "white"
        ax.add_patch(
            Rectangle(
                (x0, y0),
                x1 - x0,
                y1 - y0,
                fill=False,
                edgecolor=colour,
                linewidth=1.2,
                linestyle="-" if scores is not None else "--",
            )
        )
        caption = class_names[int(labels[k])]
        if scores is not None:
            caption += f" {scores[k]:.2f}"
        ax.text(x0, y0 - 1, caption, color=colour, fontsize=7, va="bottom")


def main(argv=None):
    """Both backbones, same budget: prints the table, writes report.json and detections.png."""
    import argparse
    import json
    import os

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", default="runs/detection_demo")
    p.add_argument("--train-scenes", type=int, default=2400)
    p.add_argument("--test-scenes", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument(
        "--export",
        action="store_true",
        help="export the first backbone's detector (float32, int8; TFLite, ONNX) and score it",
    )
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train = make_digit_scenes(args.train_scenes, **SCENES, split="train", seed=0)
    test = make_digit_scenes(args.test_scenes, **SCENES, split="test", seed=1)
    rows, models = [], {}
    for name in args.backbones.split(","):
        result = train_and_evaluate_detector(name, train, test, epochs=args.epochs)
        models[name] = result.pop("model")
        rows.append(result)
        print(
            f"{name}: mAP@0.5 {result['map50']:.3f}, mAP {result['map']:.3f}, "
            f"training {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} CPU s)",
            flush=True,
        )
    print("\n| backbone | params (backbone) | mAP@0.5 | mAP | training time |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['params'] / 1e6:.2f}M ({r['backbone_params'] / 1e6:.2f}M) | "
            f"{r['map50']:.3f} | {r['map']:.3f} | {r['seconds']:.0f} s |"
        )
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(rows, f, indent=2)
    if args.export:
        from keras_sepvit.demos import edge

        folder = os.path.join(args.out, "files")
        os.makedirs(folder, exist_ok=True)
        detector = next(iter(models.values()))
        print(edge.format_table(edge.score_detector(detector, train, test, folder)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = 6
    fig, axes = plt.subplots(len(models), shown, figsize=(2 * shown, 2.2 * len(models)))
    axes = np.asarray(axes).reshape(len(models), shown)
    for row, (name, model) in enumerate(models.items()):
        found = predict_detections(model, test["images"][:shown])
        for k in range(shown):
            draw_detections(
                axes[row, k],
                test["images"][k],
                found["boxes"][k],
                found["labels"][k],
                found["confidence"][k],
            )
        axes[row, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "detections.png"), dpi=120)
    print(f"Wrote {args.out}/report.json and {args.out}/detections.png")
    return rows


if __name__ == "__main__":
    main()
