"""The image converter of `SepViTBackbone` presets ([0, 255] pixels -> ImageNet-normalised)."""

import keras
from keras_hub.layers import ImageConverter

from keras_sepvit.hub.sepvit_backbone import PACKAGE, SepViTBackbone
from keras_sepvit.preprocessing import normalization_affine

# (x / 255 - mean) / std as `x * scale + offset`, what every preset stores.
IMAGENET_SCALE, IMAGENET_OFFSET = normalization_affine(3)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SepViTImageConverter(ImageConverter):
    """keras-hub `ImageConverter` for `SepViTBackbone` (same arguments).

    `SepViTImageConverter.from_preset("sepvit_lite_dense")` (any SepViT
    preset) maps [0, 255] RGB pixels to what the backbone takes, the ImageNet
    mean/std normalisation of the authors' code: `scale=IMAGENET_SCALE`,
    `offset=IMAGENET_OFFSET`, no resizing (`image_size=None`).
    """

    backbone_cls = SepViTBackbone
