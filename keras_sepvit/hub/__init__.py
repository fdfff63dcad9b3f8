"""keras-hub integration: `SepViTBackbone`, its image converter and presets.

Needs keras-hub (`pip install keras-sepvit[hub]`); `import keras_sepvit`
alone does not import it. Importing this module registers the SepViT presets
(architecture configs, no weights) with keras-hub, so that
`SepViTBackbone.from_preset("sepvit_lite_dense")` and
`keras_hub.layers.ImageConverter.from_preset("sepvit_lite_dense")` work
offline.
"""

from keras_hub.src.utils.preset_utils import register_presets

from keras_sepvit.hub.sepvit_backbone import SepViTBackbone
from keras_sepvit.hub.sepvit_image_converter import SepViTImageConverter
from keras_sepvit.hub.sepvit_presets import backbone_presets

register_presets(backbone_presets, SepViTBackbone)

__all__ = ["SepViTBackbone", "SepViTImageConverter", "backbone_presets"]
