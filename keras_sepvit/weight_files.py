"""Loading `weights=` files into a SepViT: `.weights.h5` and `.keras`.

Every mismatch is an error that names the file and what does not fit (a
partial load never passes silently); a `.keras` file is checked whole before
any weight is assigned.
"""

import os
import warnings
import zipfile

import keras


def check_weights_path(weights):
    """The weights path as a str; ValueError (as keras.applications) otherwise."""
    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError(
            "There are no ImageNet weights for SepViT to download: the authors published "
            "none. Pass `weights=None` (random init) or the path of a `.weights.h5` / "
            "`.keras` checkpoint (e.g. from `keras_sepvit.training`), or load the "
            "authors' PyTorch state dict with "
            "`keras_sepvit.load_official_weights(model, 'sepvit.pth')`. "
            f"Received: weights={weights!r}"
        )
    try:
        path = os.fspath(weights)
    except TypeError:
        path = None
    if not isinstance(path, str) or not path.endswith((".weights.h5", ".keras")):
        raise ValueError(
            "`weights` must be None or the path of a `.weights.h5` or `.keras` file "
            "(there are no downloads; for the authors' PyTorch weights use "
            f"`keras_sepvit.load_official_weights`). Received: weights={weights!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"The weights file does not exist. Received: weights={path!r}")
    return path


def _stem_hint(model, file_stem_shape):
    """Why the stem convolution does not fit: the channel count of the images."""
    kernel = model.get_layer("stage1_embed_conv").kernel
    if file_stem_shape is None or tuple(file_stem_shape) == tuple(kernel.shape):
        return ""
    return (
        f" The stem ('stage1_embed_conv', kernel (kh, kw, in, out)) is {tuple(kernel.shape)} "
        f"in the model and {tuple(file_stem_shape)} in the file: its input channels are the "
        "image channels, so build the model with the channel count the weights were "
        "trained on (input_shape) or retrain the stem."
    )


def _h5_stem_shape(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            stem = f.get("layers/conv2d/vars/0")
            return None if stem is None else tuple(stem.shape)
    except OSError:
        return None


def load_weights(model, path):
    if path.endswith(".keras"):
        _load_keras_file(model, path)
        return
    # Keras only warns when parts of a file do not match; a partial load must
    # not pass silently, so those warnings become an error.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
    except OSError as err:
        raise ValueError(
            f"Could not read the weights file {path!r} (truncated or not a Keras "
            f"`.weights.h5` file?): {err}"
        ) from err
    except ValueError as err:
        raise ValueError(
            f"The weights in {path!r} do not fit {model.name} (another variant, "
            f"classes, channels or ablation setting?): {_without_values(str(err))}"
            + _stem_hint(model, _h5_stem_shape(path))
        ) from err
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    if skipped:
        raise ValueError(
            f"The weights in {path!r} do not fit {model.name} (another variant, classes "
            f"or ablation setting?): {len(skipped)} parts did not match, first: {skipped[0]}"
        )


def _without_values(message):
    """Keras' mismatch message without the dump of the variable's values."""
    head, found, rest = message.partition("Target variable:")
    if not found:
        return message
    listed = rest[rest.find("List of objects") :] if "List of objects" in rest else ""
    return " ".join((head.strip(), " ".join(listed.split()))).strip()


def _load_keras_file(model, path):
    """Weights of a saved model, matched layer by layer by name.

    A file saved with the classifier loads into a model without it (the
    head's weights are left out); everything else must match exactly.
    Everything is checked before any weight is assigned.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a readable `.keras` file (empty or truncated? It is not a "
            "zip archive). Save the model again, or pass its `.weights.h5`."
        )
    try:
        source = keras.saving.load_model(path, compile=False)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"Could not read the model in {path!r} (truncated or damaged?): {err}"
        ) from err
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    target_layers = {layer.name: layer for layer in model.layers if layer.weights}
    problems = []
    for name, layer in target_layers.items():
        other = source_layers.get(name)
        if other is None:
            problems.append(f"layer {name!r} is not in the file")
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = [tuple(w.shape) for w in other.weights]
        if shapes != other_shapes:
            problems.append(f"layer {name!r}: {shapes} in the model, {other_shapes} in the file")
    extra = sorted(set(source_layers) - set(target_layers) - {"predictions"})
    if extra:
        problems.append(f"layers in the file but not in the model: {extra[:5]}")
    if problems:
        stem = source_layers.get("stage1_embed_conv")
        raise ValueError(
            f"The weights in {path!r} do not fit {model.name} (another variant, classes, "
            f"channels or ablation setting?): {len(problems)} problems, first: "
            f"{problems[:3]}" + _stem_hint(model, None if stem is None else stem.kernel.shape)
        )
    for name, layer in target_layers.items():
        layer.set_weights(source_layers[name].get_weights())
