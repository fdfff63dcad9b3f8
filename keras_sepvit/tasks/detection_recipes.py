"""The paper's COCO training settings per detection head, the head builder and its evaluation.

`recipe(head, digit_scenes)` gives the per-head defaults that
`examples/train_detection.py` uses; `build_detector(head, backbone, ...)`
builds the uncompiled detector; `evaluation(head, ...)` is the callback that
logs the head's COCO metrics every epoch (`MONITOR[head]` picks the best
checkpoint). One table, so that the script, the demos and the docs agree on
what "the paper's schedule" is.

Both heads share the paper's 1x schedule (Sec. 4.3): AdamW, weight decay
1e-3 for SepViT-T and 1e-4 for S (the script's default is 1e-4), batch 16,
12 epochs, 500 linear warm-up iterations, lr x0.1 after epochs 8 and 11,
images at a shorter side of 800 (longer at most 1333), flips. "3x + MS":
36 epochs, steps at 27 and 33, shorter side drawn from 480-800. The
learning rate the paper leaves unsaid comes from the configs it follows
(PVT, Twins), which set it per head:

- RetinaNet: 1e-4 (whai362/PVT `detection/configs/retinanet_pvt_t_fpn_1x_coco.py`,
  Meituan-AutoML/Twins `detection/configs/retinanet_pcpvt_s_fpn_1x_coco_pvt_setting.py`:
  AdamW lr 0.0001, weight_decay 0.0001); anchors 4 x stride (mmdet's octave
  base scale), keras-hub's RetinaNet head with 4 convs.
- Mask R-CNN: 2e-4 (whai362/PVT `detection/configs/mask_rcnn_pvt_t_fpn_1x_coco.py`,
  Meituan-AutoML/Twins `detection/configs/mask_rcnn_pcpvt_s_fpn_1x_coco_pvt_setting.py`:
  AdamW lr 0.0002, weight_decay 0.0001, warm-up 500, steps 8, 11). Swin's
  mmdet Mask R-CNN 1x uses 1e-4 with weight decay 0.05, a recipe whose
  weight decay the paper does not take. Anchors 8 x stride, 1,000 proposals
  per image (2,000 per level before NMS in training), 256-channel FPN and
  heads (1,024-wide box FCs): mmdet's `mask-rcnn_r50_fpn_1x`.

Digit scenes (128x128 canvases, digits of 16-32 pixels): Mask R-CNN's
anchors are 4 x stride (the finest 16 pixels) and it keeps 256 proposals.
"""

HEADS = ("retinanet", "mask_rcnn")
RECIPES = {
    "retinanet": dict(lr=1e-4, anchor_size=4.0),
    "mask_rcnn": dict(lr=2e-4, anchor_size=8.0, proposals=1000),
}
DIGIT_SCENES = {"retinanet": {}, "mask_rcnn": dict(anchor_size=4.0, proposals=256)}
# Flags added with --head: a (RetinaNet) run from before them has none of them recorded.
HEAD_FLAGS = ("head", "proposals", "head_width")
MONITOR = {"retinanet": "val_map", "mask_rcnn": "val_mask_map"}
ALSO_LOGGED = {"retinanet": ("val_map50",), "mask_rcnn": ("val_mask_map50", "val_map")}


def _check(head):
    if head not in RECIPES:
        raise ValueError(f"`head` must be one of {HEADS}. Received: head={head!r}")


def recipe(head, digit_scenes=False):
    """The per-head defaults: a dict with `lr`, `anchor_size` (and Mask R-CNN's
    `proposals`), for COCO or, with `digit_scenes`, the 128x128 digit scenes."""
    _check(head)
    return {**RECIPES[head], **(DIGIT_SCENES[head] if digit_scenes else {})}


def ignored_settings(run_folder, head):
    """The flags not to compare on a resume of the run in `run_folder` (None: not a
    resume) with `head`: `HEAD_FLAGS` when it is a RetinaNet run that stored its
    settings before they existed (it resumes as before), else none (the head is a
    setting: such a run resumed with `--head mask_rcnn` is refused)."""
    from keras_sepvit.training.settings import read_settings

    stored = None if run_folder is None else read_settings(run_folder)
    old = stored is not None and "head" not in stored
    return HEAD_FLAGS if old and head == "retinanet" else ()


def build_detector(
    head,
    backbone,
    num_classes,
    side,
    anchor_size,
    seed=None,
    head_conv_layers=4,
    proposals=1000,
    head_width=256,
    max_boxes=100,
):
    """The uncompiled detector of `head` on a built pyramid `backbone`.

    Args:
        head: "retinanet" (`sepvit_retinanet`) or "mask_rcnn" (`sepvit_mask_rcnn`).
        backbone: a keras-hub `FeaturePyramidBackbone`.
        num_classes: int. Object classes.
        side: int. The square input canvas.
        anchor_size: float. Anchor side / stride.
        seed: int or None. Head initialisation (RetinaNet) or sampling (Mask R-CNN).
        head_conv_layers: int. RetinaNet: convs in each head.
        proposals: int. Mask R-CNN: proposals per image after NMS (training:
            twice as many per level before it; test: as many).
        head_width: int. Mask R-CNN: FPN, RPN and mask head channels; the box
            head's FC layers are 4x as wide (mmdet: 256 and 1024).
        max_boxes: int. Mask R-CNN: gt boxes per image (its RoI sampling noise).
    """
    _check(head)
    if head == "retinanet":
        from keras_sepvit.tasks.retinanet import sepvit_retinanet

        return sepvit_retinanet(
            backbone,
            num_classes,
            bounding_box_format="xyxy",
            anchor_size=anchor_size,
            head_conv_layers=head_conv_layers,
            image_shape=(side, side, 3),
            seed=seed,
        )
    from keras_sepvit.tasks.mask_rcnn import sepvit_mask_rcnn

    return sepvit_mask_rcnn(
        backbone,
        num_classes,
        fpn_channels=head_width,
        box_fc_channels=4 * head_width,
        mask_channels=head_width,
        anchor_scale=anchor_size,
        train_pre_nms_topk=2 * proposals,
        train_post_nms_topk=proposals,
        test_pre_nms_topk=proposals,
        test_post_nms_topk=proposals,
        max_gt_instances=max_boxes,
        seed=seed,
    )


def evaluation(head, source, examples, batch_size=8, split_name="validation"):
    """The callback that adds `head`'s COCO metrics to every epoch's logs:
    `COCOEvaluation` (val_map, val_map50) or `InstanceCOCOEvaluation` (also
    val_mask_map, val_mask_map50)."""
    _check(head)
    if head == "retinanet":
        from keras_sepvit.tasks.coco_eval import COCOEvaluation

        return COCOEvaluation(source, examples, batch_size, split_name=split_name)
    from keras_sepvit.tasks.coco_mask_eval import InstanceCOCOEvaluation

    return InstanceCOCOEvaluation(source, examples, batch_size, split_name=split_name)
