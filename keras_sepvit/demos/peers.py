"""Peer backbones the dense demos and tests compare SepViT with."""

# keras-hub's MiT-B0 (SegFormer-B0's encoder): the config of its
# `mit_b0_ade20k_512` preset, built with random weights (no download).
MIT_B0 = {
    "layerwise_depths": [2, 2, 2, 2],
    "num_layers": 4,
    "layerwise_num_heads": [1, 2, 5, 8],
    "layerwise_sr_ratios": [8, 4, 2, 1],
    "max_drop_path_rate": 0.1,
    "layerwise_patch_sizes": [7, 3, 3, 3],
    "layerwise_strides": [4, 2, 2, 2],
    "hidden_dims": [32, 64, 160, 256],
}


def mit_b0(image_shape, **overrides):
    """keras-hub's `MiTBackbone` with `MIT_B0`'s config (entries replaced by `overrides`)."""
    import keras_hub

    return keras_hub.models.MiTBackbone(**{**MIT_B0, **overrides}, image_shape=image_shape)
