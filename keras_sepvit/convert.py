"""Everything keyed on the authors' PyTorch names (github liwei109/SepViT).

`load_official_weights` reads the authors' state dict into our model;
`load_classifier_weights` initialises a dense backbone from a classifier
(ours or theirs), as the paper starts detection and segmentation from
ImageNet; `format_transfer_report` prints what it did.

Names follow the reference code: `patch_embeds.S.*`, `pos_block.S.*`,
`blocks.S.J.*`, `norm.*`, `head.*` (S = stage 0..3, J = block in the stage).
Layouts: Linear weight (out, in) -> Dense kernel (in, out); Conv2d weight
(out, in/groups, kh, kw) -> Conv2D kernel (kh, kw, in, out), depthwise
(kh, kw, C, 1).
"""

import os

import h5py
import keras
import numpy as np

from keras_sepvit.model import SepViT
from keras_sepvit.stages import STAGE_STRIDES
from keras_sepvit.weight_files import load_weights


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
                "`keras_sepvit.load_classifier_weights` to initialise it from a classifier"
            )
        raise ValueError(
            f"The state dict does not fit {model.name} ({len(received)} tensors received, "
            f"{len(expected)} expected{hint}): " + "; ".join(parts) + ". No weight was changed."
        )
    # Every tensor was checked above: the model is changed all at once or not at all.
    for key, (variable, _) in mapping.items():
        variable.assign(values[key])
    return model


def _classifier_state(classifier):
    """{PyTorch key: array in the authors' layout} of a keras_sepvit classifier."""
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
