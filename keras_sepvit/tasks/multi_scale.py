"""Multi-scale and flip testing for any segmenter (the paper's "MS" mIoU, Sec. 4.2).

mmsegmentation's `aug_test`, which the paper's UperNet numbers use: the
image is resized by each scale (0.5 to 1.75 in steps of 0.25), run through
the segmenter, and also run mirrored left-right with the prediction mirrored
back; every prediction's logits are resized bilinearly (half-pixel centres,
PyTorch's `align_corners=False`) to the image's size, turned into
probabilities by a softmax, and averaged; the class is the argmax of the
average. With `scales=(1.0,)` and `flip=False` it is the plain prediction.

Written with `keras.ops`: every backend. The segmenter must take any input
size (every segmenter of `keras_sepvit.tasks` does) and return logits
(B, h, w, classes) channels-last at its input's resolution.
"""

import numpy as np
from keras import ops

PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def check_scales(scales):
    """`scales` as a tuple of positive floats; ValueError naming the value otherwise."""
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        values = ()
    if not values or any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(
            "`scales` must be a non-empty sequence of positive numbers, e.g. "
            f"{PAPER_SCALES} (the paper's). Received: scales={scales!r}"
        )
    return values


def parse_scales(text):
    """'0.5,0.75,1.0' or 'paper' -> a tuple of floats (for command lines)."""
    if str(text).strip().lower() == "paper":
        return PAPER_SCALES
    try:
        return check_scales(float(s) for s in str(text).split(",") if s.strip())
    except ValueError as e:
        raise ValueError(
            f"scales must be 'paper' or comma-separated positive numbers such as "
            f"'0.5,1.0,1.5'. Received: {text!r}"
        ) from e


def multi_scale_probabilities(model, images, scales=PAPER_SCALES, flip=True):
    """Mean class probabilities (B, H, W, classes) of `model` over scales and flips.

    Args:
        model: a segmenter: normalised images (B, h, w, 3) -> logits
            (B, h, w, classes), any h and w.
        images: (B, H, W, 3) array or tensor, prepared as the model expects.
        scales: positive numbers; each run sees the image resized to
            (round(H * s), round(W * s)). Defaults to the paper's 0.5..1.75.
        flip: also run every scale mirrored left-right. Defaults to True.
    """
    scales = check_scales(scales)
    if len(ops.shape(images)) != 4:
        raise ValueError(
            f"`images` must be a batch (B, H, W, 3). Received shape {tuple(ops.shape(images))}"
        )
    images = ops.convert_to_tensor(images, "float32")
    height, width = int(ops.shape(images)[1]), int(ops.shape(images)[2])
    total, count = None, 0
    for scale in scales:
        size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        scaled = images
        if size != (height, width):
            scaled = ops.image.resize(images, size, interpolation="bilinear")
        for mirrored in (False, True) if flip else (False,):
            x = ops.flip(scaled, axis=2) if mirrored else scaled
            logits = ops.cast(model(x, training=False), "float32")  # (B, h, w, classes)
            if mirrored:
                logits = ops.flip(logits, axis=2)
            if tuple(ops.shape(logits)[1:3]) != (height, width):
                logits = ops.image.resize(logits, (height, width), interpolation="bilinear")
            probabilities = ops.softmax(logits, axis=-1)  # (B, H, W, classes)
            total = probabilities if total is None else total + probabilities
            count += 1
    return total / count


def evaluate_multi_scale(model, dataset, num_classes, scales=PAPER_SCALES, flip=True, ignore=255):
    """Mean IoU of `model` over `dataset` batches `(images, labels)` with
    multi-scale + flip testing; labels equal to `ignore` are left out (as
    `keras_sepvit.tasks.segmentation_losses.mean_iou`). Returns a float."""
    from keras_sepvit.tasks.segmentation_losses import mean_iou

    metric = mean_iou(num_classes, ignore)
    for images, labels in dataset:
        probabilities = multi_scale_probabilities(model, np.asarray(images), scales, flip)
        metric.update_state(np.asarray(labels), probabilities)
    return float(metric.result())
