"""keras-hub integration: `SepViTBackbone`, its image converter and presets.

Needs keras-hub (`pip install keras-sepvit[hub]`); `import keras_sepvit`
alone does not import it.
"""

from keras_sepvit.hub.sepvit_backbone import SepViTBackbone

__all__ = ["SepViTBackbone"]
