"""Digit-scenes segmentation demo: Semantic FPN and UperNet on SepViT-Lite vs. keras-hub's MiT-B0.

Both backbones are randomly initialised and get the same head (Semantic FPN
or UperNet, `HEADS`), data,
optimiser and number of steps; the score is `keras.metrics.MeanIoU` (11
classes: background + 10 digits) on held-out scenes, made from scans that no
training scene uses (`keras_sepvit.data.digit_scenes`). TensorFlow backend
(the input pipeline is tf.data).

    from keras_sepvit.demos import segmentation
    rows = segmentation.run(["sepvit_lite", "mit_b0"], steps=600)
    print(segmentation.format_table(rows))

Or `python -m keras_sepvit.demos.segmentation [--steps N] [--out report.json]
[--export DIR]` (`--export`: the first backbone's trained model as float32 and
int8 TFLite / ONNX files in DIR, scored on the held-out scenes:
`keras_sepvit.demos.edge`).
"""

import time

import keras
import numpy as np

from keras_sepvit.data import digit_scenes
from keras_sepvit.data.segmentation import DIGIT_SCENES
from keras_sepvit.demos.backbones import build_backbone
from keras_sepvit.preprocessing import normalize_images
from keras_sepvit.tasks.segmentation_losses import mean_iou, segmentation_loss
from keras_sepvit.tasks.semantic_fpn import SemanticFPNSegmenter
from keras_sepvit.tasks.upernet import UperNetSegmenter
from keras_sepvit.training.schedules import poly_schedule

BACKBONES = ("sepvit_lite", "mit_b0")
# The demo's heads, the same for both backbones: the paper's Semantic FPN at a
# quarter of its width (256 / 128 channels cost most of a CPU step at this
# image size), and UperNet (PPM 1, 2, 3, 6; auxiliary FCN head on stage 3,
# loss weight 0.4) at an eighth of its 512 channels.
HEAD = dict(fpn_channels=64, head_channels=64, groups=16)
HEADS = {
    "semantic_fpn": HEAD,
    "upernet": dict(channels=64, auxiliary_channels=32, auxiliary_loss_weight=0.4),
}


# The demo's scenes: 64x64 canvases with 1-3 digits of 24-32 pixels (strokes
# at least 3 pixels wide; `make_digit_scenes`' defaults paste 16-32 pixel
# digits on 128x128); train_segmentation.py --digit-scenes makes the same.
SCENES = dict(image_size=64, **DIGIT_SCENES)


def make_data(
    num_train=2000,
    num_test=300,
    image_size=SCENES["image_size"],
    digit_scale=SCENES["digit_scale"],
    digits_per_scene=SCENES["digits_per_scene"],
    seed=0,
):
    """Training and held-out scenes: `{"train": (images, masks), "test": ...}`,
    images normalised float32, masks int32 (0 background, 1 + digit)."""
    out = {}
    for split, count, offset in (("train", num_train, 0), ("test", num_test, 1)):
        scenes = digit_scenes.make_digit_scenes(
            count,
            image_size=(image_size, image_size),
            digit_scale=digit_scale,
            digits_per_scene=digits_per_scene,
            split=split,
            seed=seed + offset,
        )
        out[split] = (normalize_images(scenes["images"]), scenes["masks"].astype("int32"))
    return out


def evaluate(model, images, masks, batch_size=16):
    """mIoU (`keras.metrics.MeanIoU`, 11 classes) and per-class IoU on (images, masks)."""
    metric = mean_iou(model.num_classes, ignore_class=None)
    for start in range(0, len(images), batch_size):
        logits = model.predict_on_batch(images[start : start + batch_size])
        metric.update_state(masks[start : start + batch_size], logits)
    matrix = np.asarray(keras.ops.convert_to_numpy(metric.total_cm), "float64")
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    per_class = np.diag(matrix) / np.maximum(union, 1)
    return float(metric.result()), per_class


def train_and_evaluate(
    backbone,
    data,
    steps=800,
    batch_size=16,
    learning_rate=2e-3,
    weight_decay=1e-4,
    seed=0,
    verbose=0,
    head="semantic_fpn",
):
    """Trains a segmenter (`head`: a key of `HEADS`) on `backbone` (a name of `BACKBONES`).

    AdamW with linear warm-up (5% of the steps) and poly(0.9) decay, as the
    paper's Semantic FPN recipe but at a higher learning rate for the short,
    from-scratch run; both heads get the same. Returns a dict: backbone,
    head, params, steps, train_seconds, miou, per_class_iou, model.
    """
    import tensorflow as tf

    if head not in HEADS:
        raise ValueError(f"`head` must be one of {sorted(HEADS)}. Received: head={head!r}")
    keras.utils.set_random_seed(seed)
    images, masks = data["train"]
    image_size = images.shape[1]
    segmenter = SemanticFPNSegmenter if head == "semantic_fpn" else UperNetSegmenter
    model = segmenter(
        build_backbone(backbone, image_size, drop_path_rate=0.1),
        num_classes=digit_scenes.NUM_MASK_CLASSES,
        **HEADS[head],
        compile=False,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            poly_schedule(learning_rate, steps, warmup_steps=max(1, steps // 20)),
            weight_decay=weight_decay,
            global_clipnorm=1.0,
        ),
        loss=segmentation_loss(None),
        metrics=[mean_iou(model.num_classes, None)],
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, masks))
        .shuffle(len(images), seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(2)
    )
    start = time.perf_counter()
    epochs = 10
    model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start
    miou, per_class = evaluate(model, *data["test"])
    return {
        "backbone": backbone,
        "head": head,
        "params": int(model.backbone.count_params()),
        "steps": max(1, steps // epochs) * epochs,
        "train_seconds": train_seconds,
        "miou": miou,
        "per_class_iou": per_class,
        "model": model,
    }


def run(backbones=BACKBONES, steps=800, num_train=2000, num_test=300, seed=0, **kwargs):
    """`train_and_evaluate` for each backbone on the same scenes; a list of result rows."""
    data = make_data(num_train, num_test, seed=seed)
    return [train_and_evaluate(name, data, steps=steps, seed=seed, **kwargs) for name in backbones]


def format_table(rows):
    """A Markdown table of `run`'s rows."""
    lines = [
        "| backbone | params (backbone) | steps | train time (s) | held-out mIoU |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
            f"{r['train_seconds']:.0f} | {r['miou']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    """`python -m keras_sepvit.demos.segmentation [--steps N] [--out report.json]`"""
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(description="Semantic FPN: SepViT-Lite vs. MiT-B0")
    parser.add_argument("--steps", type=int, default=800, help="training steps (batch 16)")
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="scene and training seed")
    parser.add_argument("--head", default="semantic_fpn", choices=sorted(HEADS), help="the head")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="export the first backbone's model (float32, int8; TFLite, ONNX) here and score it",
    )
    args = parser.parse_args(argv)
    from keras_sepvit.tf_logging import quiet_tensorflow

    quiet_tensorflow()
    rows = []
    data = make_data(seed=args.seed)
    for name in args.backbones.split(","):
        print(f"{args.head} on {name}: {args.steps} steps ...", flush=True)
        rows.append(
            train_and_evaluate(name, data, steps=args.steps, seed=args.seed, head=args.head)
        )
        print(
            f"  held-out mIoU {rows[-1]['miou']:.3f}, {rows[-1]['train_seconds']:.0f} s", flush=True
        )
    print(format_table(rows))
    if args.export:
        from keras_sepvit.demos import edge

        os.makedirs(args.export, exist_ok=True)
        print(edge.format_table(edge.score_segmenter(rows[0]["model"], data, args.export)))
    if args.out:
        keep = ("backbone", "params", "steps", "train_seconds", "miou")
        report = [
            {**{k: r[k] for k in keep}, "per_class_iou": [float(v) for v in r["per_class_iou"]]}
            for r in rows
        ]
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
