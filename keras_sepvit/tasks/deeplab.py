"""keras-hub's DeepLabV3 / DeepLabV3+ on a SepViT (or any feature-pyramid) backbone.

keras-hub's `DeepLabV3Backbone(image_encoder=...)` reads
`image_encoder.pyramid_outputs`: atrous spatial pyramid pooling (ASPP) on
`spatial_pyramid_pooling_key`, upsampled by `upsampling_size` and, for
DeepLabV3+, concatenated with a 48-channel projection of
`low_level_feature_key`; then a 1x1 conv-BN-ReLU and an upsampling to the
input size. `DeepLabV3ImageSegmenter` adds the 1x1 classifier.

Its feature maps are concatenated and upsampled by fixed factors, so the
input height and width must be multiples of 32 (the stride of P5).
"""

import keras

from keras_sepvit.tasks.segmentation_losses import mean_iou, segmentation_loss


def deeplabv3_segmenter(
    backbone,
    num_classes,
    spatial_pyramid_pooling_key="P5",
    low_level_feature_key="P2",
    dilation_rates=(6, 12, 18),
    projection_filters=48,
    image_shape=None,
    compile=True,
    ignore_class=255,
):
    """A keras-hub `DeepLabV3ImageSegmenter` (DeepLabV3+ by default) on `backbone`.

    Args:
        backbone: a keras-hub `FeaturePyramidBackbone` (e.g.
            `keras_sepvit.hub.SepViTBackbone`, `keras_hub.models.MiTBackbone`).
        num_classes: int. Classes of the per-pixel classifier.
        spatial_pyramid_pooling_key: str. Level that ASPP runs on. Defaults to "P5".
        low_level_feature_key: str or None. DeepLabV3+'s decoder level;
            None builds plain DeepLabV3. Defaults to "P2".
        dilation_rates: ASPP dilation rates. Defaults to (6, 12, 18).
        projection_filters: int. Channels of the low-level projection. Defaults to 48.
        image_shape: (H, W, C) or None (the backbone's input shape). H and
            W must be multiples of 32 (or None).
        compile: bool. Compile with AdamW (learning rate and weight decay
            1e-4, as Semantic FPN), per-pixel sparse cross-entropy and
            `keras.metrics.MeanIoU`, ignoring `ignore_class`. keras-hub's own
            default (categorical cross-entropy on one-hot masks) does not fit
            integer label maps. Defaults to True.
        ignore_class: int or None. Label left out of the loss and metric.
            Defaults to 255.

    Returns:
        A `keras_hub.models.DeepLabV3ImageSegmenter`: images `(B, H, W, 3)`
        -> logits `(B, H, W, num_classes)`.
    """
    from keras_hub.models import DeepLabV3Backbone, DeepLabV3ImageSegmenter

    outputs = getattr(backbone, "pyramid_outputs", None) or {}
    keys = [k for k in (spatial_pyramid_pooling_key, low_level_feature_key) if k]
    if not outputs or any(k not in outputs for k in keys):
        raise ValueError(
            f"DeepLabV3 needs a keras-hub FeaturePyramidBackbone whose pyramid_outputs hold "
            f"{keys}. Received: {type(backbone).__name__} with keys {sorted(outputs)}"
        )
    if image_shape is None:
        image_shape = tuple(backbone.input_shape[1:])
    for size in image_shape[:2]:
        if size is not None and size % 32:
            raise ValueError(
                "DeepLabV3 upsamples by fixed factors: the image height and width must be "
                f"multiples of 32. Received: image_shape={image_shape}"
            )
    spp_level = int(spatial_pyramid_pooling_key[1:])
    low_level = int(low_level_feature_key[1:]) if low_level_feature_key else spp_level
    deeplab = DeepLabV3Backbone(
        image_encoder=backbone,
        spatial_pyramid_pooling_key=spatial_pyramid_pooling_key,
        upsampling_size=2 ** (spp_level - low_level),
        dilation_rates=list(dilation_rates),
        low_level_feature_key=low_level_feature_key,
        projection_filters=projection_filters,
        image_shape=tuple(image_shape),
    )
    model = DeepLabV3ImageSegmenter(deeplab, num_classes)
    if compile:
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-4),
            loss=segmentation_loss(ignore_class),
            metrics=[mean_iou(num_classes, ignore_class)],
        )
    return model
