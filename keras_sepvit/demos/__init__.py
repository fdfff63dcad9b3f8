"""The digit-scenes comparisons of SepViT-Lite with MiT-B0 (not library code).

- `backbones`: `build_backbone`, the one factory of the randomly initialised
  pyramid backbones the demos, the training scripts and the tests compare.
- `peers`: the MiT-B0 config (`mit_b0`).
- `detection`: RetinaNet on both backbones, COCO mAP
  (`python -m keras_sepvit.demos.detection`).
- `segmentation`: Semantic FPN on both backbones, mIoU
  (`python -m keras_sepvit.demos.segmentation`).
- `edge`: a trained segmenter or detector as float32 / int8 TFLite and ONNX
  files, scored on the held-out scenes in their runtimes (the demos' `--export`).

Needs keras-hub; the input pipelines are tf.data (TensorFlow backend).
"""
