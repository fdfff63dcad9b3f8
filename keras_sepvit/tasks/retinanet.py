"""RetinaNet on a SepViT backbone: keras-hub's `RetinaNetObjectDetector`, paper Sec. 4.3.

The paper's RetinaNet setting (the mmdetection configs of PVT / Swin / Twins
it follows): an FPN on the backbone's P3..P5 (strides 8, 16, 32), P6 from the
backbone's P5 and P7 from P6 by stride-2 convolutions ("on input"), shared
4-conv heads, 9 anchors per place, focal loss. keras-hub builds all of it:
`RetinaNetBackbone(image_encoder, min_level=3, max_level=7, use_p5=True)`
and `RetinaNetObjectDetector`. This module

- builds that detector on any keras-hub `FeaturePyramidBackbone`
  (`keras_sepvit.hub.SepViTBackbone`, or `MiTBackbone` for the comparison),
  re-keying an encoder whose pyramid is named by stage instead of stride
  (`MiTBackbone`: P1..P4 are strides 4..32) with `StrideKeyedBackbone`;
- initialises the heads as the RetinaNet paper does (Lin et al. 2017, Sec.
  4.1: N(0, 0.01) kernels, the focal-loss prior on the classification
  logits). keras-hub 0.32 puts the prior on the box head and draws N(0, 0.05)
  kernels, so untrained scores are near 1 everywhere and the first steps'
  focal loss is in the hundreds;
- decodes raw head outputs without the model (`decode_detections`), for
  exported models that return `bbox_regression` / `cls_logits` only.

Example:

```python
import keras_hub
from keras_sepvit.tasks.retinanet import sepvit_retinanet

encoder = keras_hub.models.MiTBackbone(
    layerwise_depths=[2, 2, 2, 2], num_layers=4, layerwise_num_heads=[1, 2, 5, 8],
    layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1,
    layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2],
    hidden_dims=[32, 64, 160, 256], image_shape=(128, 128, 3),
)
detector = sepvit_retinanet(encoder, num_classes=10, anchor_size=2.0)
detector.compile(optimizer="adamw")
detections = detector.predict(images)  # {"boxes", "confidence", "labels", "num_detections"}
```
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sepvit.layers import PACKAGE

# Sec. 4.3: RetinaNet on P3..P7 (the FPN takes the backbone's P3..P5).
MIN_LEVEL, MAX_LEVEL = 3, 7
# keras-hub's (and the RetinaNet paper's) anchors: 3 scales x 3 aspect ratios,
# base size `anchor_size * stride`.
NUM_SCALES = 3
ASPECT_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SIZE = 4.0
PRIOR_PROBABILITY = 0.01


def _keras_hub():
    try:
        import keras_hub
    except ImportError as err:  # pragma: no cover - the [hub] extra installs it
        raise ImportError(
            "keras_sepvit.tasks.retinanet needs keras-hub: pip install keras-sepvit[hub]"
        ) from err
    return keras_hub


def _feature_pyramid_backbone():
    return _keras_hub().models.FeaturePyramidBackbone


@keras.saving.register_keras_serializable(package=PACKAGE)
class StrideKeyedBackbone(_feature_pyramid_backbone()):
    """An encoder whose pyramid outputs are renamed `P{log2 stride}`.

    keras-hub's RetinaNet reads `pyramid_outputs["P3"]` as the stride-8 map.
    Most keras-hub backbones name their pyramid that way; `MiTBackbone` names
    it by stage (`P1` is stride 4). This wrapper calls the encoder and exposes
    its maps under stride names, weights unchanged.

    Args:
        image_encoder: `keras_hub.models.FeaturePyramidBackbone`. The encoder.
        level_names: dict. Encoder key -> new key, e.g. `{"P1": "P2", ...}`.
            `stride_level_names(encoder)` computes it from a static input size.
        image_shape: tuple. Input shape; defaults to the encoder's.
    """

    def __init__(self, image_encoder, level_names, image_shape=None, dtype=None, **kwargs):
        level_names = {str(k): str(v) for k, v in dict(level_names).items()}
        missing = sorted(set(level_names) - set(image_encoder.pyramid_outputs))
        if missing:
            raise ValueError(
                f"`level_names` names levels the encoder does not have ({missing}); it has "
                f"{sorted(image_encoder.pyramid_outputs)}. Received: level_names={level_names}"
            )
        if image_shape is None:
            image_shape = tuple(image_encoder.input_shape[1:])
        image_shape = tuple(image_shape)
        extractor = keras.Model(
            inputs=image_encoder.inputs,
            outputs={new: image_encoder.pyramid_outputs[old] for old, new in level_names.items()},
            name="encoder_pyramid",
        )
        inputs = keras.layers.Input(image_shape, name="images")
        outputs = extractor(inputs)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.image_encoder = image_encoder
        self.level_names = level_names
        self.image_shape = image_shape
        self.pyramid_outputs = dict(outputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_encoder": keras.layers.serialize(self.image_encoder),
                "level_names": dict(self.level_names),
                "image_shape": self.image_shape,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_encoder"] = keras.layers.deserialize(config["image_encoder"])
        return super().from_config(config)


def stride_level_names(encoder):
    """`{encoder key: "P{log2 stride}"}` from the encoder's static map sizes.

    Returns None when the input size is not static (the keys are then taken
    as they are: keras-hub's convention is stride names).
    """
    channels_first = getattr(encoder, "data_format", None) == "channels_first"
    height = encoder.input_shape[2 if channels_first else 1]
    names = {}
    for key, tensor in encoder.pyramid_outputs.items():
        rows = tensor.shape[2 if channels_first else 1]
        if height is None or rows is None:
            return None
        level = math.log2(height / rows)
        if abs(level - round(level)) > 1e-6:
            raise ValueError(
                f"Pyramid output {key!r} is {rows} rows for a {height}-row input, not a power-"
                f"of-two stride. Received: encoder {encoder.name!r}"
            )
        names[key] = f"P{round(level)}"
    return names


def _as_pyramid_encoder(backbone):
    keras_hub = _keras_hub()
    if isinstance(backbone, str):
        backbone = keras_hub.models.Backbone.from_preset(backbone)
    if not isinstance(backbone, keras_hub.models.FeaturePyramidBackbone):
        raise ValueError(
            "`backbone` must be a keras_hub.models.FeaturePyramidBackbone (e.g. "
            "keras_sepvit.hub.SepViTBackbone, keras_hub.models.MiTBackbone) or a preset "
            f"name/folder. Received: backbone={backbone!r}"
        )
    names = stride_level_names(backbone)
    if names is not None and any(k != v for k, v in names.items()):
        backbone = StrideKeyedBackbone(backbone, names, dtype=backbone.dtype_policy)
    levels = {int(k[1:]) for k in backbone.pyramid_outputs}
    if not {MIN_LEVEL, 4, 5} <= levels:
        raise ValueError(
            "RetinaNet needs the backbone's P3, P4 and P5 (strides 8, 16, 32). Received: "
            f"backbone {backbone.name!r} with pyramid levels {sorted(backbone.pyramid_outputs)}"
        )
    return backbone


def anchor_generator(
    bounding_box_format="xyxy",
    anchor_size=ANCHOR_SIZE,
    num_scales=NUM_SCALES,
    aspect_ratios=ASPECT_RATIOS,
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
):
    """keras-hub's `AnchorGenerator` for P`min_level`..P`max_level`.

    Anchors at level l have sides `anchor_size * 2**l * 2**(s / num_scales)`,
    s = 0..num_scales-1, for each aspect ratio: `anchor_size=4` (RetinaNet)
    gives 32..50 px at P3 and 512..806 px at P7; digits of 12-32 px want 2.
    """
    return _keras_hub().layers.AnchorGenerator(
        bounding_box_format,
        min_level=min_level,
        max_level=max_level,
        num_scales=num_scales,
        aspect_ratios=list(aspect_ratios),
        anchor_size=anchor_size,
    )


def sepvit_retinanet(
    backbone,
    num_classes,
    bounding_box_format="xyxy",
    anchor_size=ANCHOR_SIZE,
    num_scales=NUM_SCALES,
    aspect_ratios=ASPECT_RATIOS,
    head_conv_layers=4,
    use_prediction_head_norm=False,
    confidence_threshold=0.05,
    iou_threshold=0.5,
    max_detections=100,
    image_shape=None,
    dtype=None,
    seed=None,
):
    """keras-hub's `RetinaNetObjectDetector` on a pyramid backbone, as the paper's RetinaNet.

    FPN on P3..P5, P6/P7 from the backbone's P5 (`use_p5=True`), shared heads,
    focal loss (`detector.compile()` defaults) and RetinaNet's head
    initialisation (`retinanet_initialization`). Inputs are images as the backbone takes them
    (`SepViTBackbone`: pixels in [0, 255]); height and width must be
    multiples of 32 so that the FPN's top-down sums line up.

    Args:
        backbone: `keras_hub.models.FeaturePyramidBackbone`, or a preset name
            or folder for `keras_hub.models.Backbone.from_preset`. Pyramids
            named by stage (`MiTBackbone`) are re-keyed by stride.
        num_classes: int. Object classes (no background class).
        bounding_box_format: str. Format of the targets and the predicted
            boxes. Defaults to "xyxy" (pixels).
        anchor_size: float. Base anchor side / stride. Defaults to 4.
        num_scales: int. Anchor scales per level. Defaults to 3.
        aspect_ratios: sequence of float. Anchor width / height ratios.
            Defaults to (0.5, 1, 2).
        head_conv_layers: int. 3x3 convs (256 wide) before each head's
            output. Defaults to 4 (RetinaNet).
        use_prediction_head_norm: bool. GroupNorm in the heads. Defaults to False.
        confidence_threshold: float. Detections kept by `predict` score above
            this. Defaults to 0.05 (the COCO evaluation setting).
        iou_threshold: float. Non-max suppression IoU. Defaults to 0.5.
        max_detections: int. Detections per image. Defaults to 100.
        image_shape: tuple. Detector input shape; defaults to the backbone's.
        dtype: dtype policy of the FPN and heads; defaults to the backbone's.
        seed: int. Seed of the heads' initialisation (`retinanet_initialization`).

    Returns:
        `keras_hub.models.RetinaNetObjectDetector`. `predict` returns decoded
        detections; calling it returns the raw `{"bbox_regression",
        "cls_logits"}` that `decode_detections` decodes.
    """
    keras_hub = _keras_hub()
    if int(num_classes) < 1:
        raise ValueError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
    if int(head_conv_layers) < 0:
        raise ValueError(
            f"`head_conv_layers` must be >= 0. Received: head_conv_layers={head_conv_layers}"
        )
    encoder = _as_pyramid_encoder(backbone)
    if image_shape is None:
        image_shape = tuple(encoder.input_shape[1:])
    for side in image_shape[:2]:
        if side is not None and side % 2**5:
            raise ValueError(
                "The detector's height and width must be multiples of 32 (the FPN adds P5 "
                f"upsampled x2 to P4). Received: image_shape={tuple(image_shape)}"
            )
    fpn_backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder,
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        use_p5=True,
        image_shape=tuple(image_shape),
        dtype=dtype or encoder.dtype_policy,
    )
    anchors = anchor_generator(bounding_box_format, anchor_size, num_scales, aspect_ratios)
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format=bounding_box_format,
        from_logits=True,
        iou_threshold=iou_threshold,
        confidence_threshold=confidence_threshold,
        max_detections=max_detections,
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=fpn_backbone,
        num_classes=int(num_classes),
        bounding_box_format=bounding_box_format,
        anchor_generator=anchors,
        use_prediction_head_norm=use_prediction_head_norm,
        pre_logits_num_conv_layers=int(head_conv_layers),
        prediction_decoder=decoder,
        dtype=dtype,
    )
    retinanet_initialization(detector, seed=seed)
    return detector


def retinanet_initialization(detector, prior_probability=PRIOR_PROBABILITY, seed=None):
    """The heads' initialisation of the RetinaNet paper (Lin et al. 2017, Sec. 4.1).

    Head convolutions: kernels N(0, 0.01), biases 0; the classification
    logits' bias -log((1 - p) / p), so every anchor starts as background with
    probability 1 - p. keras-hub 0.32 draws the kernels from N(0, 0.05) and
    puts the prior on the box head instead: the untrained logits are then
    large (scores near 1 everywhere) and the first steps' focal loss is in the
    hundreds.
    """
    generator = keras.random.SeedGenerator(seed)
    for head in (detector.box_head, detector.classification_head):
        for conv in [*head.conv_layers, head.prediction_layer]:
            conv.kernel.assign(keras.random.normal(conv.kernel.shape, stddev=0.01, seed=generator))
            if conv.bias is not None:
                conv.bias.assign(ops.zeros(conv.bias.shape, dtype=conv.bias.dtype))
    bias = detector.classification_head.prediction_layer.bias
    prior = -math.log((1 - prior_probability) / prior_probability)
    bias.assign(ops.full(bias.shape, prior, dtype=bias.dtype))


def detection_settings(detector):
    """The keyword arguments of `decode_detections` that match `detector`."""
    generator = detector.anchor_generator
    decoder = detector.prediction_decoder
    return {
        "bounding_box_format": detector.bounding_box_format,
        "anchor_size": generator.anchor_size,
        "num_scales": generator.num_scales,
        "aspect_ratios": tuple(generator.aspect_ratios),
        "min_level": generator.min_level,
        "max_level": generator.max_level,
        "confidence_threshold": decoder.confidence_threshold,
        "iou_threshold": decoder.iou_threshold,
        "max_detections": decoder.max_detections,
    }


def decode_detections(
    box_preds,
    cls_preds,
    image_shape,
    bounding_box_format="xyxy",
    anchor_size=ANCHOR_SIZE,
    num_scales=NUM_SCALES,
    aspect_ratios=ASPECT_RATIOS,
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    confidence_threshold=0.05,
    iou_threshold=0.5,
    max_detections=100,
):
    """Raw RetinaNet head outputs -> boxes, scores and classes after NMS.

    What `RetinaNetObjectDetector.predict` does after the network, without
    the model: for outputs of an exported detector (TFLite, ONNX) that
    returns `bbox_regression` and `cls_logits`. The anchor settings must be
    the detector's: `decode_detections(b, c, shape, **detection_settings(det))`.
    The boxes are decoded from center-xywh deltas against keras-hub's anchors,
    then `keras_hub.layers.NonMaxSuppression` (sigmoid of the logits, the best
    class per anchor, class-agnostic NMS) keeps `max_detections`.

    Args:
        box_preds: (B, A, 4) array. `bbox_regression`.
        cls_preds: (B, A, num_classes) array. `cls_logits` (logits).
        image_shape: (height, width) of the network input, in pixels.
        bounding_box_format: str. Format of the returned boxes. Defaults to "xyxy".
        anchor_size, num_scales, aspect_ratios, min_level, max_level: the
            detector's anchors (see `anchor_generator`).
        confidence_threshold: float. Minimum score. Defaults to 0.05.
        iou_threshold: float. NMS IoU. Defaults to 0.5.
        max_detections: int. Detections per image. Defaults to 100.

    Returns:
        dict of numpy arrays: "boxes" (B, max_detections, 4), "confidence"
        (B, max_detections), "labels" (B, max_detections) int, -1 where no
        detection, and "num_detections" (B,).
    """
    keras_hub = _keras_hub()
    height, width = (int(s) for s in tuple(image_shape)[:2])
    box_preds = ops.convert_to_tensor(np.asarray(box_preds, "float32"))
    cls_preds = ops.convert_to_tensor(np.asarray(cls_preds, "float32"))
    generator = anchor_generator(
        bounding_box_format, anchor_size, num_scales, aspect_ratios, min_level, max_level
    )
    anchors = generator(ops.zeros((height, width, 1)))
    anchors = ops.concatenate(list(anchors.values()), axis=0)  # (A, 4)
    if box_preds.shape[-2] != anchors.shape[0] or box_preds.shape[:-1] != cls_preds.shape[:-1]:
        raise ValueError(
            f"A {height}x{width} input has {anchors.shape[0]} anchors for these settings; the "
            "predictions do not match them (wrong image_shape or anchor settings?). "
            f"Received: box_preds.shape={tuple(box_preds.shape)}, "
            f"cls_preds.shape={tuple(cls_preds.shape)}, image_shape={tuple(image_shape)}"
        )
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors,
        boxes_delta=box_preds,
        encoded_format="center_xywh",
        anchor_format=bounding_box_format,
        box_format=bounding_box_format,
        image_shape=(height, width, 3),
    )
    nms = keras_hub.layers.NonMaxSuppression(
        bounding_box_format=bounding_box_format,
        from_logits=True,
        iou_threshold=iou_threshold,
        confidence_threshold=confidence_threshold,
        max_detections=max_detections,
    )
    detections = nms(boxes, cls_preds, images=ops.zeros((1, height, width, 3)))
    return {k: ops.convert_to_numpy(v) for k, v in detections.items()}


def detect(detector, images, batch_size=16):
    """Detections of `detector` on `images` (as the backbone takes them), in batches.

    The network runs eagerly on each batch and `decode_detections` decodes it
    with the detector's settings. Same numbers as `detector.predict`, which
    (keras-hub 0.32, TensorFlow) fails on a last batch smaller than the
    others: its non-max suppression needs a static batch size.

    Returns:
        dict of numpy arrays as `decode_detections`, for all images.
    """
    settings = detection_settings(detector)
    images = np.asarray(images)
    if images.ndim != 4 or not len(images):
        raise ValueError(
            f"`images` must be a non-empty (N, H, W, C) batch. Received: shape {images.shape}"
        )
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        raw = detector(batch, training=False)
        parts.append(
            decode_detections(
                raw["bbox_regression"], raw["cls_logits"], batch.shape[1:3], **settings
            )
        )
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
