"""The authors' dense-prediction SepViT backbone (detection and segmentation).

Paper Sec. 4.2-4.3: RetinaNet / Mask R-CNN on COCO and Semantic FPN /
UperNet on ADE20K use a SepViT backbone that is NOT the classifier. It is the
`SepViT` class of the authors' `detection/sepvit.py` (described in
`../shared/reference/README.md`, "Dense backbone vectors"):

- every block zero-pads its input map at the bottom/right to a multiple of
  its window size, and puts a zero window token (not a weight) in front of
  every window; norm1 then runs on the padded, token-prefixed tensor, so
  tokens and padded pixels equal `norm1.beta`;
- nothing is masked: padded pixels are queries, keys and values of DSA and
  values of PSA;
- PSA runs in every block, also where the map is one window;
- after PSA the windows are merged, cropped to H x W, and projected;
- a LayerNorm per stage (`norm_list.S`) gives the stage's output, which is
  also the next stage's input. There is no final norm and no head.

`keras_sepvit.SepViTLite(include_top=False, dense=True)` (and Tiny, Small,
Base) builds it; `keras_sepvit.feature_pyramid(model)` gives P2..P5;
`keras_sepvit.load_official_weights` reads the authors' dense state dict; and
`keras_sepvit.load_classifier_weights` (in `keras_sepvit.convert`) initialises
it from a classifier, as the paper initialises detection from ImageNet.
"""

import keras
from keras import ops

from keras_sepvit.layers import (
    PACKAGE,
    SepViTBlock,
    _static_or_dynamic,
    pad_to_window,
    window_merge,
    window_partition,
)
from keras_sepvit.stages import build_stages


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseSepViTBlock(SepViTBlock):
    """A block of the authors' dense backbone: pad, zero tokens, DSA + PSA, crop.

    `(B, H, W, C) -> (B, H, W, C)`, any H and W. Same weights as a
    "separable" `SepViTBlock` with zero window tokens (`norm1`, `attn.qkv`,
    `attn.window_norm`, `attn.pointwise_qk`, `attn.proj`, `norm2`, `fc1`,
    `fc2`), so the authors' `blocks.S.J.*` tensors map one to one.

    Args:
        num_heads: int. Attention heads.
        window_size: int. Window side (7 or 14 in the authors' configs).
        mlp_ratio: float. MLP hidden width / channels. Defaults to 4.
        drop_path_rate: float. Stochastic depth rate of this block.
    """

    def __init__(self, num_heads, window_size=7, mlp_ratio=4.0, drop_path_rate=0.0, **kwargs):
        fixed = {
            "attention": "separable",
            "token_grid": None,
            "window_token": "zero",
            "window_representation": "token",
        }
        for key, value in fixed.items():
            received = kwargs.pop(key, value)
            if received != value and not (key == "token_grid" and received is None):
                raise ValueError(
                    f"DenseSepViTBlock always uses {key}={value!r} (the authors' dense "
                    f"backbone). Received: {key}={received!r}"
                )
        super().__init__(
            num_heads,
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            **fixed,
            **kwargs,
        )

    def _attention(self, y):
        """norm1's map (B, H, W, C) -> attention output (B, H, W, C); the residual
        and the MLP are `SepViTBlock.call`'s."""
        ws = self.window_size
        height, width = _static_or_dynamic(y, 1), _static_or_dynamic(y, 2)
        grid_h, grid_w = -(-height // ws), -(-width // ws)
        # The reference pads before norm1, so its padded pixels are norm1 of a
        # zero vector: exactly beta (and y + 0 * beta keeps the others exact).
        beta = ops.cast(self.norm1.beta, y.dtype)
        padding = 1 - pad_to_window(ops.ones_like(y[:1, :, :, :1]), ws)  # (1, Hp, Wp, 1)
        windows = window_partition(pad_to_window(y, ws) + padding * beta, ws)  # (B, nW, P, C)
        batch, num_windows, channels = ops.shape(y)[0], _static_or_dynamic(windows, 1), y.shape[-1]
        tokens = ops.broadcast_to(
            ops.reshape(beta, (1, 1, 1, channels)), (batch, num_windows, 1, channels)
        )  # the normalised zero token: (B, nW, 1, C)
        out = self.attn(ops.concatenate([tokens, windows], axis=2))  # (B, nW, P, C)
        # attn.proj acts per token, so projecting before the crop equals the
        # reference's crop-then-project on the kept pixels.
        return window_merge(out, ws, grid_h, grid_w)[:, :height, :width, :]  # (B, H, W, C)

    def get_config(self):
        config = super().get_config()
        for key in ("attention", "token_grid", "window_token", "window_representation"):
            config.pop(key)
        return config


def dense_stages(x, depths, channels, num_heads, window_sizes, mlp_ratio, rates, dtype=None):
    """The four stages of the dense backbone on a (B, H, W, C) tensor.

    `keras_sepvit.stages.build_stages` with `DenseSepViTBlock`s and the
    per-stage norm `stageS_norm` (the authors' `norm_list.S`), so every
    stage output is normed. `rates`: the drop path rate of every block, in
    order; `dtype`: the dtype policy of the layers (None: the global policy).
    """

    def make_block(stage, j, block_index):
        return DenseSepViTBlock(
            num_heads[stage],
            window_size=window_sizes[stage][j],
            mlp_ratio=mlp_ratio,
            drop_path_rate=rates[block_index],
            name=f"stage{stage + 1}_block{j + 1}",
            dtype=dtype,
        )

    return build_stages(x, depths, channels, make_block, stage_norm=True, dtype=dtype)
