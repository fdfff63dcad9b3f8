"""Checks keras_sepvit against the authors' reference outputs, on the current backend.

    python -m keras_sepvit.parity [REFERENCE_DIR]

prints a JSON line with the max |difference| of each stage and of the
logits of the classifier vectors, and of each stage of every dense-backbone
pair found (`sepvit_{variant}_dense_*.weights.npz` + `.io.npz`, e.g. the
seed-0 files and any held-back set), and exits 1 if any is above the
tolerance (1e-4).
"""

import glob
import json
import os
import sys

import numpy as np

TOLERANCE = 1e-4
WEIGHTS_FILE = "sepvit_lite_official_seed0.weights.npz"
IO_FILE = "sepvit_lite_official_seed0.io.npz"
DENSE_WEIGHTS_FILE = "sepvit_lite_dense_seed0.weights.npz"
DENSE_IO_FILE = "sepvit_lite_dense_seed0.io.npz"


def default_reference_dir():
    """`$KERAS_SEPVIT_REFERENCE`, else `shared/reference` beside the repository."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get(
        "KERAS_SEPVIT_REFERENCE", os.path.join(here, "..", "..", "shared", "reference")
    )


def reference_max_differences(reference_dir=None):
    """Builds SepViT-Lite, loads the reference weights, returns max |diff| per output."""
    import keras

    from keras_sepvit.convert import load_official_weights
    from keras_sepvit.model import SepViTLite, feature_pyramid

    reference_dir = reference_dir or default_reference_dir()
    io = np.load(os.path.join(reference_dir, IO_FILE))
    model = SepViTLite(include_preprocessing=False, classifier_activation=None)
    load_official_weights(model, os.path.join(reference_dir, WEIGHTS_FILE))
    outputs = feature_pyramid(model).output
    outputs = {**outputs, "logits": model.output}
    probe = keras.Model(model.input, outputs)
    got = probe(io["input_nhwc"], training=False)
    diffs = {
        f"stage{i}": float(
            np.abs(keras.ops.convert_to_numpy(got[f"P{i + 1}"]) - io[f"stage{i}_nhwc"]).max()
        )
        for i in range(1, 5)
    }
    diffs["logits"] = float(np.abs(keras.ops.convert_to_numpy(got["logits"]) - io["logits"]).max())
    return diffs


def dense_pairs(reference_dir=None):
    """[(variant, weights path, io path)] of the dense-backbone vectors in the folder."""
    reference_dir = reference_dir or default_reference_dir()
    pairs = []
    for weights in sorted(glob.glob(os.path.join(reference_dir, "sepvit_*_dense_*.weights.npz"))):
        io = weights[: -len(".weights.npz")] + ".io.npz"
        variant = os.path.basename(weights).split("_")[1]
        if os.path.exists(io):
            pairs.append((variant, weights, io))
    return pairs


def dense_max_differences(weights, io_path, variant="lite"):
    """Builds the dense backbone, loads the authors' dense weights, max |diff| per stage."""
    import keras

    from keras_sepvit.convert import load_official_weights
    from keras_sepvit.model import VARIANTS, feature_pyramid

    with np.load(io_path) as data:
        io = {k: data[k] for k in data.files}
    model = VARIANTS[variant](
        include_top=False, dense=True, include_preprocessing=False, input_shape=(None, None, 3)
    )
    load_official_weights(model, weights)
    got = feature_pyramid(model)(io["input_nhwc"], training=False)
    return {
        f"stage{i}": float(
            np.abs(keras.ops.convert_to_numpy(got[f"P{i + 1}"]) - io[f"stage{i}_nhwc"]).max()
        )
        for i in range(1, 5)
    }


def main(argv=None):
    import keras

    argv = sys.argv[1:] if argv is None else argv
    reference_dir = argv[0] if argv else None
    diffs = reference_max_differences(reference_dir)
    for variant, weights, io in dense_pairs(reference_dir):
        name = os.path.basename(weights)[: -len(".weights.npz")]
        for stage, diff in dense_max_differences(weights, io, variant).items():
            diffs[f"{name}/{stage}"] = diff
    ok = max(diffs.values()) <= TOLERANCE
    print(json.dumps({"backend": keras.backend.backend(), "ok": ok, **diffs}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
