"""Dense-prediction tasks on SepViT backbones (keras-hub layout: one module per task).

Needs keras-hub (`pip install keras-sepvit[hub]`):

- `keras_sepvit.tasks.semantic_fpn`: Semantic FPN (the paper's ADE20K head),
  `SemanticFPNSegmenter`.
- `keras_sepvit.tasks.deeplab`: keras-hub's `DeepLabV3ImageSegmenter` on a
  SepViT (or any feature-pyramid) backbone.
- `keras_sepvit.tasks.segmentation_demo`: the digit-scenes segmentation demo.
"""
