"""The loss and metric every segmenter here trains and is scored with.

Semantic FPN (`semantic_fpn.SemanticFPNSegmenter.compile`), DeepLabV3+
(`deeplab.deeplabv3_segmenter`), the training script and the demo share
them: per-pixel sparse cross-entropy on logits and `keras.metrics.MeanIoU`,
both leaving out the ignore label (255: ADE20K's "other" and the padding of
the input pipelines).
"""

import keras


def segmentation_loss(ignore_class=255):
    """Per-pixel sparse cross-entropy on logits; pixels labelled `ignore_class` are left out."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class)


def mean_iou(num_classes, ignore_class=255, name="mean_iou"):
    """`keras.metrics.MeanIoU` on integer labels and logits (argmax), ignoring `ignore_class`."""
    return keras.metrics.MeanIoU(
        num_classes,
        name=name,
        ignore_class=ignore_class,
        sparse_y_true=True,
        sparse_y_pred=False,
    )
