"""Dense-prediction heads on SepViT backbones (keras-hub layout: one module per task).

Needs keras-hub (`pip install keras-sepvit[hub]`):

- `keras_sepvit.tasks.retinanet`: keras-hub's RetinaNet on a SepViT (or any
  feature-pyramid) backbone, `detect`, `decode_detections`.
- `keras_sepvit.tasks.coco_eval`: COCO box mAP with pycocotools, the
  per-epoch `COCOEvaluation` callback.
- `keras_sepvit.tasks.semantic_fpn`: Semantic FPN (the paper's ADE20K head),
  `SemanticFPNSegmenter`.
- `keras_sepvit.tasks.upernet`: UperNet (the paper's other ADE20K head, as
  mmseg's `UPerHead`, auxiliary FCN head in training), `UperNetSegmenter`.
- `keras_sepvit.tasks.deeplab`: keras-hub's `DeepLabV3ImageSegmenter` on a
  SepViT (or any feature-pyramid) backbone.
- `keras_sepvit.tasks.segmentation_losses`: the segmenters' loss and mean IoU.
- `keras_sepvit.tasks.mask_rcnn`: Mask R-CNN (mmdet's `mask-rcnn_r50_fpn_1x`,
  `keras.ops` only), `sepvit_mask_rcnn`, `detect_instances`; its pieces in
  `mask_rcnn_targets` (anchors, box coding, NMS, target assignment, losses)
  and `roi_align` (RoIAlign, mask pasting).
- `keras_sepvit.tasks.coco_mask_eval`: COCO `bbox` and `segm` mAP of
  instance masks (RLE, pycocotools).

Input pipelines are in `keras_sepvit.data`, the digit-scenes comparisons
with MiT-B0 in `keras_sepvit.demos`.
"""
