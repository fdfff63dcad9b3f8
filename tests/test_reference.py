"""Exactness against the authors' PyTorch SepViT (shared/reference), on every backend."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import backend_env

import keras_sepvit
from keras_sepvit.parity import TOLERANCE, reference_max_differences


def _lite(**kwargs):
    return keras_sepvit.SepViTLite(
        include_preprocessing=False, classifier_activation=None, **kwargs
    )


def test_reference_parity_tensorflow(reference_dir):
    diffs = reference_max_differences(reference_dir)
    assert set(diffs) == {"stage1", "stage2", "stage3", "stage4", "logits"}
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_reference_parity_other_backends(reference_dir, backend):
    env = backend_env(backend, KERAS_SEPVIT_REFERENCE=reference_dir)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "keras_sepvit.parity"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    report = json.loads(lines[-1])
    assert report["backend"] == backend
    assert report["ok"] and result.returncode == 0, report


def test_dynamic_shape_graph_matches_reference(reference_weights, reference_io):
    """The `None`-shape path (padding + masks as graph ops) is exact at 224 too."""
    model = _lite(input_shape=(None, None, 3))
    keras_sepvit.load_official_weights(model, reference_weights)
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    logits = fn(reference_io["input_nhwc"]).numpy()
    np.testing.assert_allclose(logits, reference_io["logits"], atol=TOLERANCE, rtol=0)
    # And equals the static-shape model at a size that needs padding.
    image = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype("float32")
    static = _lite(input_shape=(64, 96, 3))
    static.set_weights(model.get_weights())
    np.testing.assert_allclose(fn(image).numpy(), static(image).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (800, 1280)])
def test_reference_weights_run_at_other_sizes(reference_weights, size):
    model = _lite(input_shape=size + (3,))
    keras_sepvit.load_official_weights(model, reference_weights)
    image = np.random.default_rng(1).normal(size=(1,) + size + (3,)).astype("float32")
    logits = model(image).numpy()
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


def test_no_top_model_loads_without_head(reference_weights, reference_io):
    full = _lite()
    keras_sepvit.load_official_weights(full, reference_weights)
    backbone = _lite(include_top=False, pooling="avg")
    keras_sepvit.load_official_weights(backbone, reference_weights)
    features = backbone(reference_io["input_nhwc"]).numpy()
    head = full.get_layer("predictions")
    np.testing.assert_allclose(
        features @ head.kernel.numpy() + head.bias.numpy(),
        reference_io["logits"],
        atol=TOLERANCE,
    )


def _state(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda s: s.pop("blocks.0.0.win_tokens"), r"missing keys \['blocks.0.0.win_tokens'\]"),
        (lambda s: s.update({"blocks.9.0.norm1.weight": np.ones(3)}), "unexpected keys"),
        (
            lambda s: s.update({"head.weight": np.ones((10, 256), "float32")}),
            r"head.weight: file \(10, 256\)",
        ),
    ],
)
def test_state_dict_that_does_not_fit_is_refused_untouched(reference_weights, edit, match):
    state = _state(reference_weights)
    edit(state)
    model = _lite()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=match):
        keras_sepvit.load_official_weights(model, state)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_official_weights_of_another_variant_are_refused(reference_weights):
    with pytest.raises(ValueError, match=r"does not fit sepvit_tiny.*mismatched shapes"):
        keras_sepvit.load_official_weights(keras_sepvit.SepViTTiny(), reference_weights)


def test_missing_official_weights_file():
    with pytest.raises(FileNotFoundError, match="sepvit_lite.pth"):
        keras_sepvit.load_official_weights(_lite(), "sepvit_lite.pth")


def test_pth_checkpoint_loads_like_npz(reference_weights, reference_io, tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in _state(reference_weights).items()}
    path = str(tmp_path / "sepvit_lite.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    model = _lite()
    keras_sepvit.load_official_weights(model, path)
    np.testing.assert_allclose(
        model(reference_io["input_nhwc"]).numpy(), reference_io["logits"], atol=TOLERANCE
    )
