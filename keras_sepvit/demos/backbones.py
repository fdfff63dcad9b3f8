"""The one factory of the randomly initialised backbones the demos compare."""

import keras

from keras_sepvit.demos.peers import mit_b0
from keras_sepvit.model import MODEL_CONFIGS

SEPVIT_VARIANTS = ("lite", "tiny", "small", "base")
BACKBONES = (*(f"sepvit_{v}" for v in SEPVIT_VARIANTS), "mit_b0")


def build_backbone(backbone_name, image_size=None, drop_path_rate=None, seed=None):
    """A randomly initialised feature-pyramid backbone.

    Args:
        backbone_name: "sepvit_lite" (the authors' dense SepViT-Lite,
            `keras_sepvit.hub.SepViTBackbone`; also "sepvit_tiny",
            "sepvit_small", "sepvit_base") or "mit_b0" (keras-hub's
            `MiTBackbone` with SegFormer-B0's config, `peers.MIT_B0`).
        image_size: int, (height, width), or None (any size). Defaults to None.
        drop_path_rate: float or None. Stochastic depth (MiT: its maximum).
            None keeps each backbone's default (`SepViTBackbone`'s 0, not the
            classifier table's; MiT-B0's 0.1).
        seed: int or None. Seeds Keras' random generators first (the
            weights); None leaves them as they are.

    Returns:
        A keras-hub `FeaturePyramidBackbone` taking `(B, H, W, 3)` images
        normalised with the ImageNet statistics.
    """
    if backbone_name not in BACKBONES:
        raise ValueError(
            f"`backbone_name` must be one of {list(BACKBONES)}. "
            f"Received: backbone_name={backbone_name!r}"
        )
    if image_size is None or isinstance(image_size, int):
        image_size = (image_size, image_size)
    shape = (*image_size, 3)
    overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    if seed is not None:
        keras.utils.set_random_seed(seed)
    if backbone_name == "mit_b0":
        if drop_path_rate is not None:
            overrides = {"max_drop_path_rate": drop_path_rate}
        return mit_b0(shape, **overrides)
    from keras_sepvit.hub import SepViTBackbone

    config = MODEL_CONFIGS[backbone_name[len("sepvit_") :]]
    config = {k: config[k] for k in ("depths", "channels", "num_heads", "window_sizes")}
    return SepViTBackbone(**config, dense=True, image_shape=shape, **overrides)
