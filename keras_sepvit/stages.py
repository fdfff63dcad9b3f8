"""The stage loop shared by the classifier and the dense backbone, and its stride table.

A SepViT has four stages, each a patch embedding (strides 4, 8, 16, 32 in
all), blocks and a position encoding after the first block (Li et al.,
"SepViT: Separable Vision Transformer", https://arxiv.org/abs/2203.15380,
Table 1). `build_stages` runs that loop for any block kind;
`classifier_stages` with the classifier's `SepViTBlock`s, and
`keras_sepvit.dense.dense_stages` with the dense backbone's blocks.
"""

from keras import layers

from keras_sepvit.layers import LayerNorm, PositionEncoding, SepViTBlock

# The authors' model is defined at 224: a block has window tokens and PWA iff
# its stage map at 224 holds more than one window. We keep exactly that weight
# layout and carry it to every resolution (see `block_attention`).
DESIGN_RESOLUTION = 224
STAGE_STRIDES = (4, 8, 16, 32)
TOTAL_STRIDE = STAGE_STRIDES[-1]
# Smallest input side: one pixel at stride 32 (as keras.applications' min_size).
MIN_SIZE = TOTAL_STRIDE


def block_attention(stage, window_size):
    """Attention kind and design-resolution window grid of a block.

    Returns `(kind, grid)`: "separable" with the 224 window grid where the
    reference has window tokens and PWA; otherwise the block has no PWA
    weights, and it attends within ws x ws windows ("window", stage-3 GSA,
    whose cross-window exchange comes from the DSSA blocks it alternates
    with) or over the whole map ("global", the last stage, which has no PWA
    block to give it a global view).
    """
    side = DESIGN_RESOLUTION // STAGE_STRIDES[stage]
    grid = side // window_size
    if grid > 1:
        return "separable", (grid, grid)
    return ("global" if stage == len(STAGE_STRIDES) - 1 else "window"), None


def patch_embedding(x, stage, channels, dtype=None):
    """Overlapping patch embedding of a stage, with PyTorch's symmetric padding.

    (B, H, W, C_in) -> (B, ceil(H / stride), ceil(W / stride), channels):
    kernel 7 stride 4 in stage 0, kernel 3 stride 2 after, then LayerNorm.
    `dtype`: the dtype policy of the layers (None: the global policy).
    """
    kernel, stride = (7, 4) if stage == 0 else (3, 2)
    prefix = f"stage{stage + 1}"
    x = layers.ZeroPadding2D(
        kernel // 2, data_format="channels_last", name=f"{prefix}_embed_pad", dtype=dtype
    )(x)
    x = layers.Conv2D(
        channels,
        kernel,
        strides=stride,
        data_format="channels_last",
        name=f"{prefix}_embed_conv",
        dtype=dtype,
    )(x)  # (B, ceil(H / stride), ceil(W / stride), C)
    return LayerNorm(epsilon=1e-5, name=f"{prefix}_embed_norm", dtype=dtype)(x)


def build_stages(x, depths, channels, make_block, stage_norm=False, dtype=None):
    """The four stages of a SepViT on a (B, H, W, C) tensor, for any block kind.

    Per stage: the patch embedding (`stageS_embed_*`), the blocks
    `make_block(stage, j, block_index)` named `stageS_blockJ` (`block_index`
    counts blocks over all stages), the position encoding after the first
    (`stageS_pos_encoding`), with `stage_norm` a LayerNorm (`stageS_norm`),
    and `stageS_output` (the map `feature_pyramid` reads). Returns the four
    stage outputs, (B, ceil(H / 4), ceil(W / 4), C1) ... (B, ceil(H / 32),
    ceil(W / 32), C4).
    """
    outputs = []
    block_index = 0
    for stage in range(len(depths)):
        prefix = f"stage{stage + 1}"
        # (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), C_stage)
        x = patch_embedding(x, stage, channels[stage], dtype=dtype)
        for j in range(depths[stage]):
            x = make_block(stage, j, block_index)(x)
            block_index += 1
            if j == 0:
                x = PositionEncoding(name=f"{prefix}_pos_encoding", dtype=dtype)(x)
        if stage_norm:
            x = LayerNorm(epsilon=1e-6, name=f"{prefix}_norm", dtype=dtype)(x)
        x = layers.Identity(name=f"{prefix}_output", dtype=dtype)(x)
        outputs.append(x)
    return outputs


def classifier_stages(
    x,
    depths,
    channels,
    num_heads,
    window_sizes,
    mlp_ratio,
    rates,
    attention=None,
    window_token="learnable",
    window_representation="token",
    dtype=None,
):
    """The four stages of the classifier on a (B, H, W, C) tensor (`build_stages`).

    Layers are named as the authors' `patch_embeds.S`, `blocks.S.J`,
    `pos_block.S`. `rates`: the drop path rate of every block, in order.
    """

    def make_block(stage, j, block_index):
        kind, grid = block_attention(stage, window_sizes[stage][j])
        if attention == "global":
            kind, grid = "global", None
        return SepViTBlock(
            num_heads[stage],
            window_size=window_sizes[stage][j],
            attention=kind,
            token_grid=grid,
            window_token=window_token,
            window_representation=window_representation,
            mlp_ratio=mlp_ratio,
            drop_path_rate=rates[block_index],
            name=f"stage{stage + 1}_block{j + 1}",
            dtype=dtype,
        )

    return build_stages(x, depths, channels, make_block, dtype=dtype)
