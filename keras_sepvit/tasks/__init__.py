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

Input pipelines are in `keras_sepvit.data`, the digit-scenes comparisons
with MiT-B0 in `keras_sepvit.demos`.
"""
