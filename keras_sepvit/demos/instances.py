"""Digit-scenes instance segmentation demo: Mask R-CNN on SepViT-Lite vs. keras-hub's MiT-B0.

Each pasted digit of a scene is an instance (`digit_scenes.instance_masks`).
Both backbones are randomly initialised and get the same Mask R-CNN
(`keras_sepvit.tasks.mask_rcnn`, at the demo's width `HEAD`), data,
optimiser and schedule; the scores are pycocotools' `bbox` and `segm` mAP
on held-out scenes made from scans that no training scene uses.

    from keras_sepvit.data.digit_scenes import make_digit_scenes
    from keras_sepvit.demos import detection, instances
    train = make_digit_scenes(2400, **detection.SCENES, split="train", seed=0)
    test = make_digit_scenes(500, **detection.SCENES, split="test", seed=1)
    row = instances.train_and_evaluate("sepvit_lite", train, test)
    print(row["mask_map50"], row["box_map50"])
"""

import time

import keras
import numpy as np

from keras_sepvit.data.digit_scenes import NUM_CLASSES, instance_masks, pad_boxes
from keras_sepvit.demos.backbones import build_backbone
from keras_sepvit.preprocessing import normalize_images

# The demo's Mask R-CNN: mmdet's layout at a quarter of its width, and the
# proposal and RoI counts scaled to 64x64 scenes with 1-3 digits (the paper's
# 1000 proposals and 512 RoIs are for 800x1333 COCO images). Anchors of 4x the
# stride: 16-32 px at P2-P3, the digits' 16-24 px.
HEAD = dict(
    fpn_channels=64,
    box_fc_channels=256,
    mask_channels=64,
    anchor_scale=4,
    train_pre_nms_topk=300,
    train_post_nms_topk=100,
    test_pre_nms_topk=300,
    test_post_nms_topk=100,
    rpn_batch_size=128,
    roi_batch_size=64,
    max_candidates=300,
    max_detections=20,
    max_gt_instances=8,
)


def instance_targets(scenes, max_boxes=None):
    """`model.fit` targets of digit scenes: boxes, labels (-1 pads) and (N, M, H, W) masks."""
    targets = pad_boxes(scenes["boxes"], scenes["labels"], max_boxes=max_boxes)
    count, most = targets["labels"].shape
    masks = np.zeros((count, most, *scenes["instances"].shape[1:]), "uint8")
    for n in range(count):
        found = instance_masks(scenes, n)
        masks[n, : len(found)] = found
    targets["masks"] = masks
    return targets


def evaluate(model, scenes, batch_size=32):
    """pycocotools `bbox` and `segm` metrics of `model` on digit scenes."""
    from keras_sepvit.tasks.coco_mask_eval import evaluate_instances
    from keras_sepvit.tasks.mask_rcnn import detect_instances

    found = detect_instances(model, normalize_images(scenes["images"]), batch_size)
    truth = instance_targets(scenes)
    return evaluate_instances(truth["masks"], truth["labels"], found, categories=range(NUM_CLASSES))


def train_and_evaluate(
    backbone_name,
    train_scenes,
    test_scenes,
    epochs=2,
    batch_size=16,
    learning_rate=1e-3,
    weight_decay=1e-4,
    warmup_epochs=0.5,
    seed=0,
    verbose=0,
    **head,
):
    """Trains Mask R-CNN on `backbone_name` (random init) and scores it on `test_scenes`.

    The recipe of the RetinaNet demo (`demos.detection`): AdamW, linear
    warm-up then cosine decay to 1% of `learning_rate`, global norm clip 5.
    `head` overrides entries of `HEAD`. `warmup_epochs` may be a fraction.

    Returns:
        dict: "backbone", "box_map50", "box_map", "mask_map50", "mask_map",
        "metrics" ({"bbox": ..., "segm": ...}), "seconds" (training wall
        time), "eval_seconds", "params", "backbone_params", "history" and
        "model" (the trained `MaskRCNN`).
    """
    from keras_sepvit.tasks.mask_rcnn import sepvit_mask_rcnn
    from keras_sepvit.training import warmup_cosine_schedule

    images = np.asarray(train_scenes["images"])
    if images.ndim != 4 or len(images) < batch_size:
        raise ValueError(
            "`train_scenes` must hold (N, H, W, 3) images with N >= batch_size. Received: "
            f"images of shape {images.shape}, batch_size={batch_size}"
        )
    backbone = build_backbone(backbone_name, images.shape[1:3], seed=seed)
    model = sepvit_mask_rcnn(backbone, NUM_CLASSES, seed=seed, **{**HEAD, **head})
    steps = len(images) // batch_size
    schedule = warmup_cosine_schedule(
        learning_rate,
        total_steps=steps * epochs,
        warmup_steps=max(1, int(steps * warmup_epochs)),
        min_learning_rate=learning_rate / 100,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay, global_clipnorm=5.0)
    )
    targets = instance_targets(train_scenes)
    start = time.perf_counter()
    history = model.fit(
        normalize_images(images),
        targets,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps,
        shuffle=True,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(model, test_scenes)
    return {
        "backbone": backbone_name,
        "box_map50": metrics["bbox"]["map50"],
        "box_map": metrics["bbox"]["map"],
        "mask_map50": metrics["segm"]["map50"],
        "mask_map": metrics["segm"]["map"],
        "metrics": metrics,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - start,
        "params": model.count_params(),
        "backbone_params": backbone.count_params(),
        "history": history.history,
        "model": model,
    }
