"""Loads the authors' PyTorch SepViT state dict (github liwei109/SepViT) into our model.

Names follow the reference code: `patch_embeds.S.*`, `pos_block.S.*`,
`blocks.S.J.*`, `norm.*`, `head.*` (S = stage 0..3, J = block in the stage).
Layouts: Linear weight (out, in) -> Dense kernel (in, out); Conv2d weight
(out, in/groups, kh, kw) -> Conv2D kernel (kh, kw, in, out), depthwise
(kh, kw, C, 1).
"""

import os

import numpy as np

from keras_sepvit.model import STAGE_STRIDES


def _linear(w):
    return w.T


def _conv(w):
    return w.transpose(2, 3, 1, 0)


def _depthwise(w):
    return w.transpose(2, 3, 0, 1)


def _same(w):
    return w


def _dense(prefix, layer):
    return {f"{prefix}.weight": (layer.kernel, _linear), f"{prefix}.bias": (layer.bias, _same)}


def _norm(prefix, layer):
    return {f"{prefix}.weight": (layer.gamma, _same), f"{prefix}.bias": (layer.beta, _same)}


def official_weight_map(model):
    """{PyTorch key: (keras variable, layout transform)} for a keras_sepvit model."""
    mapping = {}
    stage = 0
    while True:
        try:
            conv = model.get_layer(f"stage{stage + 1}_embed_conv")
        except ValueError:
            break
        pre = f"patch_embeds.{stage}"
        mapping[f"{pre}.proj.weight"] = (conv.kernel, _conv)
        mapping[f"{pre}.proj.bias"] = (conv.bias, _same)
        mapping.update(_norm(f"{pre}.norm", model.get_layer(f"stage{stage + 1}_embed_norm")))
        try:  # the dense backbone's per-stage output norm
            mapping.update(_norm(f"norm_list.{stage}", model.get_layer(f"stage{stage + 1}_norm")))
        except ValueError:
            pass
        peg = model.get_layer(f"stage{stage + 1}_pos_encoding").conv
        mapping[f"pos_block.{stage}.proj.0.weight"] = (peg.kernel, _depthwise)
        mapping[f"pos_block.{stage}.proj.0.bias"] = (peg.bias, _same)
        j = 0
        while True:
            try:
                block = model.get_layer(f"stage{stage + 1}_block{j + 1}")
            except ValueError:
                break
            pre = f"blocks.{stage}.{j}"
            tokens = block.window_tokens
            if tokens is not None and tokens.learnable:
                mapping[f"{pre}.win_tokens"] = (tokens.tokens, _same)
            mapping.update(_norm(f"{pre}.norm1", block.norm1))
            mapping.update(_norm(f"{pre}.norm2", block.norm2))
            mapping.update(_dense(f"{pre}.mlp.fc1", block.fc1))
            mapping.update(_dense(f"{pre}.mlp.fc2", block.fc2))
            attn = block.attn
            mapping.update(_dense(f"{pre}.attn.DSA_qkv", attn.qkv))
            if attn.pointwise:
                mapping.update(_norm(f"{pre}.attn.win_tokens_norm", attn.window_norm))
                mapping.update(_dense(f"{pre}.attn.PSA_qk", attn.pointwise_qk))
            mapping.update(_dense(f"{pre}.attn.proj", attn.proj))
            j += 1
        stage += 1
    if stage != len(STAGE_STRIDES):
        raise ValueError(
            f"Not a keras_sepvit SepViT model: found {stage} stages. Received: model {model.name!r}"
        )
    try:
        mapping.update(_norm("norm", model.get_layer("norm")))
    except ValueError:
        pass  # the dense backbone has no final norm (its state dict's norm.* is unused)
    try:
        mapping.update(_dense("head", model.get_layer("predictions")))
    except ValueError:
        pass  # include_top=False: the classifier is not loaded
    return mapping


def read_state_dict(path):
    """Reads a state dict from `.npz`, or `.pth`/`.pt` (needs torch) -> {key: ndarray}."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file not found. Received: path={path!r}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            state = {k: data[k] for k in data.files}
    elif path.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"Reading {path!r} needs PyTorch (`pip install torch`); or save the "
                "state dict as .npz with numpy."
            ) from err
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("model", "state_dict", "model_ema"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
        state = {k: v.detach().float().numpy() for k, v in state.items()}
    else:
        raise ValueError(f"Expected a `.npz`, `.pth` or `.pt` state dict. Received: path={path!r}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _file_shape(transform, shape):
    """The PyTorch-layout shape whose `transform` has Keras shape `shape`."""
    return tuple(np.shape(_INVERSE[transform](np.broadcast_to(np.empty((), bool), shape))))


_INVERSE = {
    _linear: _linear,
    _conv: lambda w: w.transpose(3, 2, 0, 1),
    _depthwise: _depthwise,
    _same: _same,
}


def _check_tensor(key, value, variable, transform):
    """(`value` in the model's layout and dtype, None) or (None, (kind, why it does not fit))."""
    expected = f"expected {_file_shape(transform, tuple(variable.shape))} float"
    try:
        array = np.asarray(value)
    except Exception as error:  # e.g. a tensor that numpy cannot read
        return None, ("dtype", f"{key}: not an array ({type(value).__name__}: {error}), {expected}")
    received = f"file {tuple(array.shape)} {array.dtype}"
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"):
        return None, ("dtype", f"{key}: {received}, {expected} (not a floating-point tensor)")
    if array.ndim != len(variable.shape) or (
        tuple(transform(array).shape) != tuple(variable.shape)
    ):
        return None, ("shape", f"{key}: {received}, {expected}")
    array = transform(array).astype(variable.dtype)
    if not np.isfinite(array).all():
        count = int(array.size - np.isfinite(array).sum())
        return None, ("values", f"{key}: {count} of {array.size} values are NaN or infinite")
    return array, None


def load_official_weights(model, weights):
    """Loads the authors' PyTorch SepViT weights into a keras_sepvit model.

    Args:
        model: a model from `keras_sepvit.SepViT*` of the same variant (built
            with `include_top=False`, the `head.*` tensors are skipped). A
            dense backbone (`dense=True`) reads the authors' detection /
            segmentation state dict (`norm_list.*`; its unused `norm.*` and
            `head.*` are skipped).
        weights: a path (`.npz`, or `.pth`/`.pt` with torch installed) or a
            dict of arrays keyed by the PyTorch names.

    Raises:
        ValueError: naming the first missing, unexpected, mis-shaped, not
            floating-point or non-finite tensors (key, expected and received
            shape and dtype), before any weight is changed.

    Returns:
        The model.
    """
    state = weights if isinstance(weights, dict) else read_state_dict(weights)
    mapping = official_weight_map(model)
    has_head = "head.weight" in mapping
    has_norm = "norm.weight" in mapping
    expected = set(mapping)
    # The authors' dense backbone builds `norm` and `head` but never calls them.
    received = {
        k
        for k in state
        if (has_head or not k.startswith("head.")) and (has_norm or not k.startswith("norm."))
    }
    missing = sorted(expected - received)
    unexpected = sorted(received - expected)
    problems = {"shape": [], "dtype": [], "values": []}
    values = {}
    for key in sorted(expected & received):
        variable, transform = mapping[key]
        values[key], problem = _check_tensor(key, state[key], variable, transform)
        if problem is not None:
            problems[problem[0]].append(problem[1])
    if missing or unexpected or any(problems.values()):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}")
        if problems["shape"]:
            parts.append(f"mismatched shapes {problems['shape'][:5]}")
        if problems["dtype"]:
            parts.append(f"mismatched dtypes {problems['dtype'][:5]}")
        if problems["values"]:
            parts.append(f"non-finite tensors {problems['values'][:5]} (a damaged file?)")
        hint = (
            "; another variant or ablation setting?" if parts[:-1] or not problems["values"] else ""
        )
        file_dense = any(k.startswith("norm_list.") for k in state)
        if file_dense != any(k.startswith("norm_list.") for k in mapping):
            hint = (
                "; the file is the authors' dense (detection/segmentation) backbone: build "
                "the model with `include_top=False, dense=True`"
                if file_dense
                else "; the file is a classifier and the model a dense backbone: use "
                "`keras_sepvit.dense.load_classifier_weights` to initialise it from a classifier"
            )
        raise ValueError(
            f"The state dict does not fit {model.name} ({len(received)} tensors received, "
            f"{len(expected)} expected{hint}): " + "; ".join(parts) + ". No weight was changed."
        )
    # Every tensor was checked above: the model is changed all at once or not at all.
    for key, (variable, _) in mapping.items():
        variable.assign(values[key])
    return model
