"""Mask R-CNN on a SepViT backbone: the paper's COCO instance segmentation (Sec. 4.3).

He et al., "Mask R-CNN", ICCV 2017 (https://arxiv.org/abs/1703.06870), as
mmdetection's `mask-rcnn_r50_fpn_1x_coco` runs it for SepViT / PVT / Swin /
Twins, written with `keras.ops` (TensorFlow, JAX, PyTorch):

1. FPN (`semantic_fpn.FPNNeck`: 1x1 laterals, nearest top-down, 3x3 outputs,
   256 channels) on the backbone's P2..P5, and P6 = max-pool(1, stride 2) of
   P5's output (mmdet's `add_extra_convs=False`).
2. `RPNHead`: one 3x3 conv + ReLU shared over P2..P6, 1x1 objectness and
   box convs; 3 anchors per place (ratios 0.5, 1, 2; side 8 x stride,
   strides 4..64). Proposals: the best `pre_nms_topk` per level, NMS 0.7
   per level, the best `post_nms_topk` (mmdet: 2000 / 1000 in training, 1000
   / 1000 at test).
3. RoIAlign (aligned, `sampling_ratio` 2; mmdet's 0 is adaptive, see
   `roi_align`) at 7x7 for the box head and 14x14 for the mask head, each
   RoI on one of P2..P5 (`map_roi_levels`, finest scale 56).
4. `BoxHead`: two 1024-wide FC layers, softmax classifier (background last)
   and class-specific deltas (stds 0.1, 0.1, 0.2, 0.2). `MaskHead`: four
   3x3 convs (256), a 2x2 stride-2 deconvolution, a 1x1 conv: per-class 28x28
   mask logits.
5. Training (`compute_loss`, so `model.fit(images, targets)` works on every
   backend): RPN targets (IoU >= 0.7 positive, < 0.3 negative, every gt's best
   anchors positive at IoU >= 0.3; 256 anchors, half positive), RoI targets
   (gt boxes added to the proposals; IoU >= 0.5 positive; 512 RoIs, 25%
   positive), losses: RPN sigmoid CE + L1, box softmax CE + L1, mask
   per-pixel sigmoid CE on the gt class with 28x28 targets RoIAligned from
   the gt masks (binarised at 0.5).
6. Inference (`predict` / `detect_instances`): softmax scores > 0.05, boxes
   decoded per class, class-wise NMS 0.5, the best 100; their masks
   (class channel, sigmoid) pasted into the image (`roi_align.paste_masks`).

Targets: `{"boxes": (B, M, 4) xyxy pixels, "labels": (B, M) int, -1 pads,
"masks": (B, M, H, W) uint8}` at the network input's size: the layout of
`keras_sepvit.data.detection.train_dataset` plus the masks. Any padding of
boxes works (rows whose label is < 0 are ignored). Inputs are images as the
backbone takes them; channels last only.

Example:

```python
from keras_sepvit.hub import SepViTBackbone
from keras_sepvit.tasks.mask_rcnn import sepvit_mask_rcnn

backbone = SepViTBackbone.from_preset("sepvit_lite_dense")
model = sepvit_mask_rcnn(backbone, num_classes=80)
model.fit(images, {"boxes": boxes, "labels": labels, "masks": masks}, batch_size=2)
found = model.predict(images)  # boxes, classes, scores, num_detections, masks
```
"""

import keras
import numpy as np
from keras import layers, ops

from keras_sepvit.layers import PACKAGE
from keras_sepvit.optimizer_build import OptimizerBuiltBeforeFit
from keras_sepvit.tasks import mask_rcnn_targets as targets_lib
from keras_sepvit.tasks.retinanet import _keras_hub
from keras_sepvit.tasks.roi_align import multilevel_roi_align, paste_masks
from keras_sepvit.tasks.semantic_fpn import LEVELS, FPNNeck, pyramid_model

STRIDES = targets_lib.STRIDES  # P2..P6
ROI_STRIDES = STRIDES[:4]  # RoIs read P2..P5
RPN_SETTINGS = dict(positive_iou=0.7, negative_iou=0.3, min_positive_iou=0.3)
ROI_SETTINGS = dict(positive_iou=0.5, negative_iou=0.5, min_positive_iou=0.5)


def _he_normal_fan_out():
    # mmcv's kaiming_init (fan_out, ReLU): the mask head's convolutions
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def _check_fraction(name, value, low=0.0, high=1.0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"`{name}` must be in [{low}, {high}]. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class RPNHead(layers.Layer):
    """mmdet's `RPNHead`: a shared 3x3 conv + ReLU, 1x1 objectness and box convs.

    `[(B, h_l, w_l, C) for each level] -> logits (B, sum h_l w_l A)` and
    `deltas (B, sum h_l w_l A, 4)`, levels one after another, each level
    row-major with its A anchors innermost (`level_anchors`' order).

    Args:
        channels: int. Width of the shared conv. Defaults to 256.
        num_anchors: int. Anchors per place. Defaults to 3.
    """

    def __init__(self, channels=256, num_anchors=3, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("channels", channels)
        _check_positive_int("num_anchors", num_anchors)
        self.channels = channels
        self.num_anchors = num_anchors
        normal = keras.initializers.RandomNormal(stddev=0.01)  # mmdet's RPNHead init
        self.conv = layers.Conv2D(
            channels, 3, padding="same", kernel_initializer=normal, name="conv"
        )
        self.objectness = layers.Conv2D(num_anchors, 1, kernel_initializer=normal, name="cls")
        self.box = layers.Conv2D(4 * num_anchors, 1, kernel_initializer=normal, name="reg")

    def build(self, input_shape):
        shape = tuple(input_shape[0])
        self.conv.build(shape)
        shape = self.conv.compute_output_shape(shape)
        self.objectness.build(shape)
        self.box.build(shape)

    def call(self, inputs):
        logits, deltas = [], []
        for x in inputs:
            x = ops.relu(self.conv(x))
            logits.append(ops.reshape(self.objectness(x), (ops.shape(x)[0], -1)))  # (B, h w A)
            deltas.append(ops.reshape(self.box(x), (ops.shape(x)[0], -1, 4)))  # (B, h w A, 4)
        return ops.concatenate(logits, axis=1), ops.concatenate(deltas, axis=1)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "num_anchors": self.num_anchors}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoxHead(layers.Layer):
    """mmdet's `Shared2FCBBoxHead`: (B, R, 7, 7, C) RoI features -> class logits and deltas.

    Returns `logits (B, R, num_classes + 1)` (background last) and
    class-specific `deltas (B, R, num_classes, 4)`.

    Args:
        num_classes: int. Object classes.
        fc_channels: int. Width of the two FC layers. Defaults to 1024.
    """

    def __init__(self, num_classes, fc_channels=1024, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("fc_channels", fc_channels)
        self.num_classes = num_classes
        self.fc_channels = fc_channels
        self.fc1 = layers.Dense(fc_channels, activation="relu", name="fc1")
        self.fc2 = layers.Dense(fc_channels, activation="relu", name="fc2")
        self.classifier = layers.Dense(
            num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="cls",
        )  # fmt: skip
        self.regressor = layers.Dense(
            4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="reg",
        )  # fmt: skip

    def build(self, input_shape):
        flat = input_shape[-3] * input_shape[-2] * input_shape[-1]
        self.fc1.build((None, flat))
        self.fc2.build((None, self.fc_channels))
        self.classifier.build((None, self.fc_channels))
        self.regressor.build((None, self.fc_channels))

    def call(self, inputs):
        rois = ops.shape(inputs)[1]
        flat = inputs.shape[-3] * inputs.shape[-2] * inputs.shape[-1]
        x = ops.reshape(inputs, (-1, rois, flat))  # (B, R, 7 * 7 * C)
        x = self.fc2(self.fc1(x))
        deltas = ops.reshape(self.regressor(x), (-1, rois, self.num_classes, 4))  # (B, R, K, 4)
        return self.classifier(x), deltas

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "fc_channels": self.fc_channels,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskHead(layers.Layer):
    """mmdet's `FCNMaskHead`: 4 x (3x3 conv + ReLU), 2x deconv + ReLU, 1x1 conv.

    `(B, R, 14, 14, C) -> (B, R, 28, 28, num_classes)` mask logits.

    Args:
        num_classes: int. Object classes (one mask channel each).
        channels: int. Width of the convolutions. Defaults to 256.
        num_convs: int. 3x3 convolutions. Defaults to 4.
    """

    def __init__(self, num_classes, channels=256, num_convs=4, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("channels", channels)
        _check_positive_int("num_convs", num_convs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        init = _he_normal_fan_out()
        self.convs = [
            layers.Conv2D(
                channels,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=init,
                name=f"conv{i}",
            )  # fmt: skip
            for i in range(num_convs)
        ]
        self.upsample = layers.Conv2DTranspose(
            channels, 2, strides=2, activation="relu", kernel_initializer=init, name="upsample"
        )
        self.logits = layers.Conv2D(num_classes, 1, kernel_initializer=init, name="logits")

    def build(self, input_shape):
        shape = (None,) + tuple(input_shape[-3:])
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.upsample.build(shape)
        self.logits.build(self.upsample.compute_output_shape(shape))

    def call(self, inputs):
        rois = ops.shape(inputs)[1]
        size = inputs.shape[-2]
        x = ops.reshape(inputs, (-1, size, size, inputs.shape[-1]))  # (B R, 14, 14, C)
        for conv in self.convs:
            x = conv(x)
        x = self.logits(self.upsample(x))  # (B R, 28, 28, K)
        return ops.reshape(x, (-1, rois, 2 * size, 2 * size, self.num_classes))  # (B, R, 28, 28, K)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "num_convs": self.num_convs,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskRCNN(OptimizerBuiltBeforeFit, keras.Model):
    """Mask R-CNN (mmdet's `mask-rcnn_r50_fpn_1x`) on a feature-pyramid backbone.

    `model(images)` and `model.predict(images)` return the detections (see
    `detect`); `model(images, training=True)` returns the raw training
    outputs that `compute_loss` turns into the loss, so `model.fit(images,
    {"boxes", "labels", "masks"})` trains it on every backend. Build it with
    `sepvit_mask_rcnn`; the arguments are documented there.
    """

    def __init__(
        self,
        backbone,
        num_classes,
        fpn_channels=256,
        anchor_scale=targets_lib.ANCHOR_SCALE,
        aspect_ratios=targets_lib.ASPECT_RATIOS,
        train_pre_nms_topk=2000,
        train_post_nms_topk=1000,
        test_pre_nms_topk=1000,
        test_post_nms_topk=1000,
        rpn_nms_iou=0.7,
        rpn_batch_size=256,
        rpn_positive_fraction=0.5,
        roi_batch_size=512,
        roi_positive_fraction=0.25,
        box_fc_channels=1024,
        mask_channels=256,
        sampling_ratio=2,
        score_threshold=0.05,
        nms_iou=0.5,
        max_detections=100,
        max_candidates=2000,
        mask_threshold=0.5,
        max_gt_instances=100,
        pyramid_keys=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name in (
            "num_classes", "fpn_channels", "train_pre_nms_topk", "train_post_nms_topk",
            "test_pre_nms_topk", "test_post_nms_topk", "rpn_batch_size", "roi_batch_size",
            "box_fc_channels", "mask_channels", "sampling_ratio", "max_detections",
            "max_candidates", "max_gt_instances",
        ):  # fmt: skip
            _check_positive_int(name, locals()[name])
        for name in ("rpn_nms_iou", "rpn_positive_fraction", "roi_positive_fraction",
                     "score_threshold", "nms_iou", "mask_threshold"):  # fmt: skip
            _check_fraction(name, locals()[name])
        if getattr(backbone, "data_format", "channels_last") == "channels_first":
            raise ValueError(
                "MaskRCNN takes channels-last backbones only. Received: a backbone with "
                "data_format='channels_first'"
            )
        self.backbone = backbone
        self.num_classes = num_classes
        self.fpn_channels = fpn_channels
        self.anchor_scale = anchor_scale
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.train_pre_nms_topk = train_pre_nms_topk
        self.train_post_nms_topk = train_post_nms_topk
        self.test_pre_nms_topk = test_pre_nms_topk
        self.test_post_nms_topk = test_post_nms_topk
        self.rpn_nms_iou = rpn_nms_iou
        self.rpn_batch_size = rpn_batch_size
        self.rpn_positive_fraction = rpn_positive_fraction
        self.roi_batch_size = roi_batch_size
        self.roi_positive_fraction = roi_positive_fraction
        self.box_fc_channels = box_fc_channels
        self.mask_channels = mask_channels
        self.sampling_ratio = sampling_ratio
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.max_candidates = max_candidates
        self.mask_threshold = mask_threshold
        self.max_gt_instances = max_gt_instances
        self.pyramid_keys = None if pyramid_keys is None else list(pyramid_keys)
        self.seed = seed
        self.pyramid = pyramid_model(backbone, pyramid_keys)
        self.fpn = FPNNeck(fpn_channels, LEVELS, "channels_last", name="fpn")
        self.rpn_head = RPNHead(fpn_channels, len(self.aspect_ratios), name="rpn_head")
        self.box_head = BoxHead(num_classes, box_fc_channels, name="box_head")
        self.mask_head = MaskHead(num_classes, mask_channels, name="mask_head")
        self.seed_generator = keras.random.SeedGenerator(seed, name="sampling_seed")

    def build(self, input_shape=None):
        shapes = {k: tuple(v.shape) for k, v in self.pyramid.output.items()}
        self.fpn.build(shapes)
        level = (None, None, None, self.fpn_channels)
        self.rpn_head.build([level])
        self.box_head.build((None, None, 7, 7, self.fpn_channels))
        self.mask_head.build((None, None, 14, 14, self.fpn_channels))
        self.built = True

    def _levels(self, images, training):
        pyramid = self.pyramid([images], training=training)  # its inputs are a list
        features = self.fpn(pyramid)
        maps = [features[k] for k in LEVELS]
        maps.append(ops.max_pool(maps[-1], 1, strides=2))  # P6 (mmdet: max_pool2d(P5, 1, 2))
        return maps

    def _anchors(self, maps):
        anchors, sizes = [], []
        for x, stride in zip(maps, STRIDES):
            height, width = x.shape[1], x.shape[2]
            anchors.append(
                targets_lib.level_anchors(
                    height, width, stride, self.anchor_scale, self.aspect_ratios
                )  # fmt: skip
            )
            sizes.append(height * width * len(self.aspect_ratios))
        return ops.concatenate(anchors, axis=0), sizes  # (A_total, 4)

    def _proposals(self, maps, image_size, training):
        logits, deltas = self.rpn_head(maps)
        anchors, sizes = self._anchors(maps)
        pre, post = (
            (self.train_pre_nms_topk, self.train_post_nms_topk)
            if training
            else (self.test_pre_nms_topk, self.test_post_nms_topk)
        )
        proposals, valid = targets_lib.propose(
            logits, deltas, anchors, sizes, image_size, pre, post, self.rpn_nms_iou
        )
        return logits, deltas, anchors, proposals, valid

    def call(self, images, training=False):
        if training:
            return self.training_outputs(images, training=True)
        image_size = self._image_size(images)
        maps = self._levels(images, training=False)
        _, _, _, proposals, valid = self._proposals(maps, image_size, training=False)
        return self.detect(maps, proposals, valid, image_size)

    def _image_size(self, images):
        image_size = tuple(images.shape[1:3])
        if None in image_size:
            raise ValueError(
                "MaskRCNN needs images of a static height and width (the anchors and the "
                f"pasted masks are sized from them). Received: images of shape {images.shape}"
            )
        return image_size

    def training_outputs(self, images, training=True):
        """The raw outputs `compute_loss` needs: P2..P6, RPN outputs, proposals, noise.

        Proposals use the training settings (`train_*_nms_topk`); the noise
        that drives the anchor and RoI sampling is drawn from the model's
        seed generator here, in the forward pass, so that its state advances
        on every backend (JAX keeps the state updates of the forward pass only).
        """
        image_size = self._image_size(images)
        maps = self._levels(images, training)
        logits, deltas, _, proposals, valid = self._proposals(maps, image_size, True)
        roi_count = proposals.shape[1] + self.max_gt_instances
        zeros = ops.zeros_like(logits)
        return {
            **{f"P{n + 2}": x for n, x in enumerate(maps)},
            "rpn_logits": logits,
            "rpn_deltas": deltas,
            "proposals": proposals,
            "proposal_valid": valid,
            "rpn_noise": keras.random.uniform(ops.shape(zeros), seed=self.seed_generator) + zeros,
            "roi_noise": keras.random.uniform(
                (ops.shape(zeros)[0], roi_count), seed=self.seed_generator
            ),
        }

    def detect(self, maps, proposals, valid, image_size):
        """Box head on the proposals, class-wise NMS, masks of the kept boxes.

        Returns a dict: "boxes" (B, K, 4) xyxy input pixels, "classes" (B, K)
        int32 (-1 where empty), "scores" (B, K), "num_detections" (B,),
        "masks" (B, K, H, W) uint8; K = `max_detections`.
        """
        features = multilevel_roi_align(maps[:4], proposals, 7, ROI_STRIDES, self.sampling_ratio)
        class_logits, deltas = self.box_head(features)
        scores = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[..., :-1]  # (B, P, K)
        scores = scores * ops.cast(valid, "float32")[..., None]
        rois = ops.repeat(proposals[:, :, None, :], self.num_classes, axis=2)  # (B, P, K, 4)
        boxes = targets_lib.decode_boxes(deltas, rois, targets_lib.BOX_STDS, image_size)
        count = proposals.shape[1] * self.num_classes
        boxes = ops.reshape(boxes, (-1, count, 4))  # (B, P K, 4)
        scores = ops.reshape(scores, (-1, count))  # (B, P K)
        scores = ops.where(scores > self.score_threshold, scores, 0.0)
        classes = ops.tile(ops.arange(self.num_classes, dtype="int32"), (proposals.shape[1],))
        top, index = ops.top_k(scores, min(self.max_candidates, count))  # (B, N)
        boxes = ops.take_along_axis(boxes, index[..., None], axis=1)
        classes = ops.take(classes, index)  # (B, N)
        keep, kept = targets_lib.batched_nms(
            boxes, top, classes, self.max_detections, self.nms_iou, image_size
        )
        kept_f = ops.cast(kept, "float32")
        boxes = ops.take_along_axis(boxes, keep[..., None], axis=1) * kept_f[..., None]
        scores = ops.take_along_axis(top, keep, axis=1) * kept_f
        classes = ops.where(kept, ops.take_along_axis(classes, keep, axis=1), -1)
        mask_features = multilevel_roi_align(maps[:4], boxes, 14, ROI_STRIDES, self.sampling_ratio)
        mask_logits = self.mask_head(mask_features)  # (B, K, 28, 28, classes)
        channel = ops.clip(classes, 0, self.num_classes - 1)[..., None, None, None]
        probabilities = ops.sigmoid(ops.take_along_axis(mask_logits, channel, axis=-1)[..., 0])
        pasted = paste_masks(probabilities, boxes, image_size, threshold=None)  # (B, K, H, W)
        # thresholded and masked as booleans: TFLite has no uint8 MUL or SELECT kernel
        inside = ops.logical_and(pasted >= self.mask_threshold, kept[..., None, None])
        masks = ops.cast(inside, "uint8")
        missing = self.max_detections - boxes.shape[1]
        if missing > 0:  # fewer candidates than max_detections: pad to a fixed K
            boxes = ops.pad(boxes, [[0, 0], [0, missing], [0, 0]])
            scores = ops.pad(scores, [[0, 0], [0, missing]])
            classes = ops.pad(classes, [[0, 0], [0, missing]], constant_values=-1)
            masks = ops.pad(masks, [[0, 0], [0, missing], [0, 0], [0, 0]])
        return {
            "boxes": boxes,
            "classes": classes,
            "scores": scores,
            "num_detections": ops.sum(ops.cast(kept, "int32"), axis=1),
            "masks": masks,
        }

    def loss_components(self, outputs, targets):
        """The five losses of a training forward `outputs` against `targets` (a dict)."""
        gt_boxes = ops.cast(targets["boxes"], "float32")
        gt_labels = ops.cast(targets["labels"], "int32")
        gt_valid = gt_labels >= 0
        maps = [outputs[f"P{n + 2}"] for n in range(len(STRIDES))]
        anchors, _ = self._anchors(maps)
        rpn_settings = dict(
            RPN_SETTINGS, num=self.rpn_batch_size, positive_fraction=self.rpn_positive_fraction
        )
        rpn_cls, rpn_box = targets_lib.rpn_losses(
            outputs["rpn_logits"], outputs["rpn_deltas"], anchors, gt_boxes, gt_valid,
            outputs["rpn_noise"], rpn_settings,
        )  # fmt: skip
        roi_settings = dict(
            ROI_SETTINGS,
            num=self.roi_batch_size,
            positive_fraction=self.roi_positive_fraction,
            num_classes=self.num_classes,
        )
        candidates = outputs["proposals"].shape[1] + gt_boxes.shape[1]
        noise = outputs["roi_noise"]
        noise = ops.take(noise, ops.arange(candidates) % noise.shape[1], axis=1)
        samples = targets_lib.sample_rois(
            outputs["proposals"], outputs["proposal_valid"], gt_boxes, gt_labels, gt_valid,
            noise, roi_settings,
        )  # fmt: skip
        features = multilevel_roi_align(
            maps[:4], samples["rois"], 7, ROI_STRIDES, self.sampling_ratio
        )
        class_logits, deltas = self.box_head(features)
        box_cls, box_l1 = targets_lib.box_head_losses(
            class_logits, deltas, samples, self.num_classes
        )
        # positives come first, at most roi_batch_size * roi_positive_fraction of them
        slots = min(
            max(int(self.roi_batch_size * self.roi_positive_fraction), 1),
            samples["rois"].shape[1],
        )
        rois = samples["rois"][:, :slots]
        mask_logits = self.mask_head(
            multilevel_roi_align(maps[:4], rois, 14, ROI_STRIDES, self.sampling_ratio)
        )
        mask_targets = targets_lib.mask_targets(
            targets["masks"], rois, samples["matched"][:, :slots], mask_logits.shape[2],
            self.sampling_ratio,
        )  # fmt: skip
        mask = targets_lib.mask_loss(
            mask_logits, mask_targets, samples["labels"][:, :slots],
            samples["positive"][:, :slots],
        )  # fmt: skip
        return {
            "rpn_cls": rpn_cls, "rpn_box": rpn_box, "box_cls": box_cls, "box_l1": box_l1,
            "mask": mask,
        }  # fmt: skip

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The sum of `loss_components` (plus layer losses such as regularisers).

        `y_pred` is `training_outputs`; with detections instead (`evaluate`)
        the raw outputs are computed again (`training=False`: no dropout).
        """
        if y is None:
            raise ValueError(
                "MaskRCNN trains on targets {'boxes', 'labels', 'masks'}. Received: y=None"
            )
        if not isinstance(y_pred, dict) or "rpn_logits" not in y_pred:
            y_pred = self.training_outputs(x, training=False)
        components = self.loss_components(y_pred, y)
        loss = ops.sum(ops.stack(list(components.values())))
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        return loss

    def compile(self, optimizer="auto", **kwargs):
        """`keras.Model.compile`; "auto" is AdamW (learning rate 1e-4, weight decay 1e-4).

        The loss is `compute_loss`; a `loss=` given here is refused.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                f"MaskRCNN computes its own loss (compute_loss). Received: loss={kwargs['loss']!r}"
            )
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-4)
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "num_classes": self.num_classes,
            "fpn_channels": self.fpn_channels,
            "anchor_scale": self.anchor_scale,
            "aspect_ratios": list(self.aspect_ratios),
            "train_pre_nms_topk": self.train_pre_nms_topk,
            "train_post_nms_topk": self.train_post_nms_topk,
            "test_pre_nms_topk": self.test_pre_nms_topk,
            "test_post_nms_topk": self.test_post_nms_topk,
            "rpn_nms_iou": self.rpn_nms_iou,
            "rpn_batch_size": self.rpn_batch_size,
            "rpn_positive_fraction": self.rpn_positive_fraction,
            "roi_batch_size": self.roi_batch_size,
            "roi_positive_fraction": self.roi_positive_fraction,
            "box_fc_channels": self.box_fc_channels,
            "mask_channels": self.mask_channels,
            "sampling_ratio": self.sampling_ratio,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
            "max_candidates": self.max_candidates,
            "mask_threshold": self.mask_threshold,
            "max_gt_instances": self.max_gt_instances,
            "pyramid_keys": self.pyramid_keys,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


def sepvit_mask_rcnn(backbone, num_classes, **kwargs):
    """Mask R-CNN (He et al. 2017, mmdet's `mask-rcnn_r50_fpn_1x`) on a pyramid backbone.

    Args:
        backbone: a keras-hub `FeaturePyramidBackbone` with strides 4..32
            (`keras_sepvit.hub.SepViTBackbone`, `keras_hub.models.MiTBackbone`),
            a functional model with a dict output (`keras_sepvit.feature_pyramid`),
            or a keras-hub preset name / folder.
        num_classes: int. Object classes (no background class).
        fpn_channels: int. FPN and RPN width. Defaults to 256.
        anchor_scale: float. Anchor side / stride. Defaults to 8.
        aspect_ratios: tuple of float. Anchor height / width. Defaults to (0.5, 1, 2).
        train_pre_nms_topk, train_post_nms_topk: int. RPN proposals per level
            before NMS and per image after it, in training. Defaults to 2000
            and 1000 (mmdet 1x; Detectron2 keeps 2000 after NMS).
        test_pre_nms_topk, test_post_nms_topk: int. The same at inference.
            Defaults to 1000 and 1000. Small images (tests, digit scenes)
            can use a few hundred: the work grows with these numbers.
        rpn_nms_iou: float. Proposal NMS IoU, per level. Defaults to 0.7.
        rpn_batch_size, rpn_positive_fraction: anchors sampled per image for
            the RPN loss and their positive share. Defaults to 256 and 0.5.
        roi_batch_size, roi_positive_fraction: RoIs sampled per image for the
            box and mask losses and their positive share. Defaults to 512 and 0.25.
        box_fc_channels: int. Width of the box head's FC layers. Defaults to 1024.
        mask_channels: int. Width of the mask head. Defaults to 256.
        sampling_ratio: int. RoIAlign samples per bin and axis. Defaults to 2.
        score_threshold: float. Minimum class score of a detection. Defaults to 0.05.
        nms_iou: float. Class-wise NMS IoU of the detections. Defaults to 0.5.
        max_detections: int. Detections per image. Defaults to 100.
        max_candidates: int. Best (box, class) pairs per image that enter the
            class-wise NMS (mmdet: all above the threshold). Defaults to 2000.
        mask_threshold: float. Pasted mask probability threshold. Defaults to 0.5.
        max_gt_instances: int. Size of the drawn RoI-sampling noise for gt
            boxes (more gts reuse it). Defaults to 100.
        pyramid_keys: None or the backbone's 4 keys for strides 4..32.
        seed: int or None. Seed of the anchor and RoI sampling.

    Returns:
        A built `MaskRCNN`.
    """
    if isinstance(backbone, str):
        backbone = _keras_hub().models.Backbone.from_preset(backbone)
    _check_positive_int("num_classes", num_classes)
    model = MaskRCNN(backbone, num_classes, **kwargs)
    model.build(backbone.input_shape)
    return model


def detect_instances(model, images, batch_size=8):
    """`model`'s detections on `images`, in batches, as NumPy arrays.

    Returns:
        dict: "boxes" (N, K, 4) xyxy pixels, "classes" (N, K) int32 (-1
        where empty), "scores" (N, K), "num_detections" (N,), "masks"
        (N, K, H, W) uint8 at the images' size.
    """
    images = ops.convert_to_numpy(images)
    if images.ndim != 4 or not len(images):
        raise ValueError(
            f"`images` must be a non-empty (N, H, W, C) batch. Received: shape {images.shape}"
        )
    parts = []
    for start in range(0, len(images), batch_size):
        found = model(images[start : start + batch_size], training=False)
        parts.append({k: ops.convert_to_numpy(v) for k, v in found.items()})
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
