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
`load_classifier_weights` initialises it from a classifier, as the paper
initialises detection from ImageNet.
"""

import os

import keras
import numpy as np
from keras import ops

from keras_sepvit.layers import (
    PACKAGE,
    SepViTBlock,
    _static_or_dynamic,
    pad_to_window,
    window_merge,
    window_partition,
)


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


def check_dense_arguments(include_top, attention, window_token, window_representation):
    """ValueError (naming the value) for options the dense backbone does not have."""
    if include_top:
        raise ValueError(
            "The dense backbone (`dense=True`) is a feature extractor for detection and "
            "segmentation heads; it has no classifier. Pass `include_top=False`. "
            f"Received: include_top={include_top!r}"
        )
    if attention is not None:
        raise ValueError(
            f"`dense=True` builds the authors' dense backbone. Received: attention={attention!r}"
        )
    if window_token != "learnable" or window_representation != "token":
        raise ValueError(
            "The dense backbone always uses zero window tokens made on each call (the "
            "authors' code); leave `window_token` and `window_representation` at their "
            f"defaults. Received: window_token={window_token!r}, "
            f"window_representation={window_representation!r}"
        )


def dense_stages(x, depths, channels, num_heads, window_sizes, mlp_ratio, rates, dtype=None):
    """The four stages of the dense backbone on a (B, H, W, C) tensor.

    `keras_sepvit.model.build_stages` with `DenseSepViTBlock`s and the
    per-stage norm `stageS_norm` (the authors' `norm_list.S`), so every
    stage output is normed. `rates`: the drop path rate of every block, in
    order; `dtype`: the dtype policy of the layers (None: the global policy).
    """
    from keras_sepvit.model import build_stages

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


def _classifier_state(classifier):
    """{PyTorch key: array in the authors' layout} of a keras_sepvit classifier."""
    from keras_sepvit.convert import _INVERSE, official_weight_map

    return {
        key: _INVERSE[transform](np.asarray(keras.ops.convert_to_numpy(variable)))
        for key, (variable, transform) in official_weight_map(classifier).items()
    }


def _read_classifier(path, model):
    """A saved keras_sepvit classifier (`.keras`, `.weights.h5`) as a model;
    any other path is returned (the authors' state dict, read later)."""
    if not path.endswith((".keras", ".weights.h5")):
        return path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No classifier file at {path!r}.")
    if path.endswith(".keras"):
        return keras.saving.load_model(path, compile=False)
    config = getattr(model, "get_config", dict)()
    if "depths" not in config:
        raise ValueError(
            f"A `.weights.h5` holds no architecture, and {model.name!r} does not say which "
            "classifier wrote it: pass the classifier model itself or its `.keras` file. "
            f"Received: classifier={path!r}"
        )
    import h5py

    from keras_sepvit.model import SepViT
    from keras_sepvit.weight_files import load_weights

    with h5py.File(path, "r") as f:
        head = f.get("layers/dense/vars/1")  # the classifier's only top-level Dense
        classes = None if head is None else int(head.shape[0])
    classifier = SepViT(
        **{k: config[k] for k in ("depths", "channels", "num_heads", "window_sizes")},
        mlp_ratio=config.get("mlp_ratio", 4.0),
        include_top=classes is not None,
        classes=classes or 1000,
        input_shape=(None, None, 3),
        name="classifier",
    )
    load_weights(classifier, path)  # refuses a file that does not fit, naming why
    return classifier


def load_classifier_weights(model, classifier, verbose=True):
    """Initialises a dense backbone from a SepViT classifier of the same variant.

    This is how the paper starts detection and segmentation from an ImageNet
    classifier. Every tensor the two networks share is copied (patch
    embeddings, position encodings, and in every block norm1, DSA, proj,
    norm2 and the MLP; PSA where the classifier has it). What the dense
    backbone has and the classifier lacks is NEW and initialised as the
    authors' `_init_weights` does (Linear: truncated normal std 0.02, bias
    0; LayerNorm: weight 1, bias 0):
      - the per-stage output norms `norm_list.S`;
      - PSA (`win_tokens_norm`, `PSA_qk`) in the blocks where the classifier
        has one window at 224 (stage-3 GSA blocks and stage 4).
    What the classifier has and the dense backbone does not use is reported
    as UNUSED: the learnable window tokens (the dense backbone's are zeros),
    the final `norm` and the `head`.

    Args:
        model: a dense backbone (`SepViT*(include_top=False, dense=True)`).
        classifier: a keras_sepvit classifier model; the path of a saved one
            (`.keras`, or `.weights.h5` when `model` is a `SepViTBackbone`,
            whose config builds the classifier); or the path (or dict) of the
            authors' classifier state dict (`.npz`, `.pth`).
        verbose: bool. Print the report. Defaults to True.

    Raises:
        ValueError: if a shared tensor has another shape (another variant),
            before any weight is changed.

    Returns:
        A dict `{"loaded": [...], "new": [...], "unused": [...]}` of PyTorch key
        names.
    """
    from keras_sepvit.convert import _check_tensor, official_weight_map, read_state_dict

    if isinstance(classifier, (str, os.PathLike)):
        classifier = _read_classifier(os.fspath(classifier), model)
    if isinstance(classifier, keras.Model):
        state = _classifier_state(classifier)
    elif isinstance(classifier, dict):
        state = classifier
    else:
        state = read_state_dict(classifier)
    mapping = official_weight_map(model)
    if not any(key.startswith("norm_list.") for key in mapping):
        raise ValueError(
            "`load_classifier_weights` fills a dense backbone; build it with "
            f"`include_top=False, dense=True`. Received: model {model.name!r}"
        )
    loaded = sorted(set(mapping) & set(state))
    new = sorted(set(mapping) - set(state))
    unused = sorted(set(state) - set(mapping))
    if not loaded:
        raise ValueError(
            "No tensor of the classifier fits the dense backbone (not a SepViT state "
            f"dict?). Received: {len(state)} tensors, first {sorted(state)[:3]}"
        )
    values, problems = {}, []
    for key in loaded:
        variable, transform = mapping[key]
        values[key], problem = _check_tensor(key, state[key], variable, transform)
        if problem is not None:
            problems.append(problem[1])
    if problems:
        raise ValueError(
            f"The classifier does not fit {model.name} (another variant?): {len(problems)} "
            f"tensors do not fit, first {problems[:3]}. No weight was changed."
        )
    rng = np.random.default_rng(0)
    for key in new:
        variable, _ = mapping[key]
        shape = tuple(variable.shape)
        if key.endswith(".bias"):
            values[key] = np.zeros(shape, "float32")
        elif len(shape) == 1:  # LayerNorm weight
            values[key] = np.ones(shape, "float32")
        else:  # Linear kernel: truncated normal, std 0.02
            values[key] = np.clip(rng.normal(0.0, 0.02, shape), -0.04, 0.04).astype("float32")
    for key, (variable, _) in mapping.items():
        variable.assign(values[key])
    report = {"loaded": loaded, "new": new, "unused": unused}
    if verbose:
        print(format_transfer_report(report))
    return report


def format_transfer_report(report):
    """A short text summary of `load_classifier_weights`' report."""

    def groups(keys):
        names = sorted({".".join(k.split(".")[:-1]) for k in keys})
        return ", ".join(names) if names else "none"

    return (
        f"Loaded {len(report['loaded'])} tensors from the classifier.\n"
        f"New (initialised as the authors' _init_weights): {groups(report['new'])}\n"
        f"Unused classifier tensors: {groups(report['unused'])}"
    )
