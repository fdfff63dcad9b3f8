"""The authors' dense (detection / segmentation) backbone: exactness, any size, transfer."""

import math
import os

import keras
import numpy as np
import pytest

import keras_sepvit
from keras_sepvit.convert import load_classifier_weights
from keras_sepvit.dense import DenseSepViTBlock
from keras_sepvit.parity import (
    DENSE_IO_FILE,
    DENSE_WEIGHTS_FILE,
    TOLERANCE,
    dense_max_differences,
    dense_pairs,
)


def _dense(**kwargs):
    return keras_sepvit.SepViTLite(
        include_top=False,
        dense=True,
        include_preprocessing=False,
        input_shape=(None, None, 3),
        **kwargs,
    )


@pytest.fixture(scope="module")
def dense_reference(reference_dir):
    weights = os.path.join(reference_dir, DENSE_WEIGHTS_FILE)
    io = os.path.join(reference_dir, DENSE_IO_FILE)
    if not os.path.exists(weights) and os.environ.get("KERAS_SEPVIT_REQUIRE_REFERENCE"):
        pytest.fail(f"{DENSE_WEIGHTS_FILE} not found in {reference_dir!r}")
    if not os.path.exists(weights):
        pytest.skip(f"{DENSE_WEIGHTS_FILE} not found in {reference_dir!r}")
    return weights, io


def test_dense_parity_with_the_authors_backbone(dense_reference):
    """256x320 pads in every block (README table): all four normed stages match."""
    diffs = dense_max_differences(*dense_reference)
    assert set(diffs) == {"stage1", "stage2", "stage3", "stage4"}
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_every_dense_reference_pair_is_checked(reference_dir, dense_reference):
    """Held-back vectors dropped into the folder are checked the same way."""
    pairs = dense_pairs(reference_dir)
    assert ("lite",) + dense_reference in pairs
    for variant, weights, io in pairs:
        diffs = dense_max_differences(weights, io, variant)
        assert max(diffs.values()) <= TOLERANCE, (weights, diffs)


@pytest.mark.parametrize("size", [(250, 333), (33, 47), (224, 224)])
def test_any_size_gives_ceil_of_stride(size):
    pyramid = keras_sepvit.feature_pyramid(_dense())
    image = np.random.default_rng(0).normal(size=(1,) + size + (3,)).astype("float32")
    out = pyramid(image)
    for level, stride in zip(("P2", "P3", "P4", "P5"), (4, 8, 16, 32)):
        expected = (1, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert tuple(out[level].shape[:3]) == expected, (level, out[level].shape)
        assert np.isfinite(keras.ops.convert_to_numpy(out[level])).all()


@pytest.mark.slow
def test_coco_size_800x1333(dense_reference):
    model = _dense()
    keras_sepvit.load_official_weights(model, dense_reference[0])
    out = keras_sepvit.feature_pyramid(model)(np.zeros((1, 800, 1333, 3), "float32"))
    assert tuple(out["P5"].shape) == (1, 25, 42, 256)


def test_static_and_dynamic_shapes_agree(dense_reference):
    dynamic = _dense()
    keras_sepvit.load_official_weights(dynamic, dense_reference[0])
    static = keras_sepvit.SepViTLite(
        include_top=False, dense=True, include_preprocessing=False, input_shape=(250, 333, 3)
    )
    static.set_weights(dynamic.get_weights())
    image = np.random.default_rng(1).normal(size=(2, 250, 333, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(static(image)),
        keras.ops.convert_to_numpy(dynamic(image)),
        atol=1e-5,
    )


def test_padding_is_not_masked_unlike_the_classifier(dense_reference):
    """The authors' dense blocks let padded pixels take part in attention: a
    block on a 5x5 map (padded to 7x7 with zeros inside) equals the block on
    the zero-padded 7x7 map, cropped. With masked padding (the classifier) the
    two would differ. Checks that we did not 'fix' the authors' behaviour."""
    model = _dense()
    keras_sepvit.load_official_weights(model, dense_reference[0])
    block = model.get_layer("stage1_block1")
    x = np.random.default_rng(2).normal(size=(1, 5, 5, 32)).astype("float32")
    padded_zero = np.pad(x, [[0, 0], [0, 2], [0, 2], [0, 0]])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(x)),
        keras.ops.convert_to_numpy(block(padded_zero))[:, :5, :5],
        atol=1e-5,
    )
    masked = keras_sepvit.SepViTBlock(1, window_size=7, window_token="zero")  # the classifier's
    masked(x)
    masked.set_weights(block.get_weights())
    assert not np.allclose(
        keras.ops.convert_to_numpy(masked(x)),
        keras.ops.convert_to_numpy(masked(padded_zero))[:, :5, :5],
        atol=1e-3,
    )


def test_dense_block_round_trips_and_refuses_other_settings():
    block = DenseSepViTBlock(2, window_size=7, name="b")
    config = block.get_config()
    assert "window_token" not in config
    clone = DenseSepViTBlock.from_config(config)
    x = np.random.default_rng(0).normal(size=(2, 9, 11, 16)).astype("float32")
    block(x)
    clone(x)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(x)), keras.ops.convert_to_numpy(clone(x)), atol=1e-6
    )
    with pytest.raises(ValueError, match="window_token='learnable'"):
        DenseSepViTBlock(2, window_token="learnable")


def test_dense_model_keras_file_round_trip(tmp_path):
    model = keras_sepvit.SepViTLite(include_top=False, dense=True, input_shape=(None, None, 3))
    path = str(tmp_path / "dense.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    image = np.random.default_rng(0).uniform(0, 255, size=(1, 70, 90, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(image)),
        keras.ops.convert_to_numpy(loaded(image)),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"include_top": True}, "include_top=False"),
        ({"include_top": False, "window_token": "zero"}, "window_token='zero'"),
    ],
)
def test_dense_refuses_classifier_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_sepvit.SepViTLite(dense=True, **kwargs)


def test_classifier_weights_initialise_the_dense_backbone(reference_weights, capsys):
    classifier = keras_sepvit.SepViTLite(include_preprocessing=False)
    keras_sepvit.load_official_weights(classifier, reference_weights)
    dense = _dense()
    report = load_classifier_weights(dense, classifier)
    printed = capsys.readouterr().out
    assert "norm_list.0" in printed and "win_tokens" in printed
    # New: the four stage norms and PSA in the single-window blocks at 224
    # (stage-3 GSA blocks 1, 3, 5 and both stage-4 blocks).
    new_groups = {".".join(k.split(".")[:-1]) for k in report["new"]}
    expected = {f"norm_list.{s}" for s in range(4)}
    for s, j in [(2, 1), (2, 3), (2, 5), (3, 0), (3, 1)]:
        expected |= {f"blocks.{s}.{j}.attn.win_tokens_norm", f"blocks.{s}.{j}.attn.PSA_qk"}
    assert new_groups == expected
    unused = {".".join(k.split(".")[:-1]) for k in report["unused"]}
    assert {"norm", "head"} <= unused and "blocks.0.0" in unused  # win_tokens
    # Shared tensors are copied exactly; new LayerNorms are identity-initialised.
    np.testing.assert_array_equal(
        dense.get_layer("stage2_block1").attn.qkv.kernel.numpy(),
        classifier.get_layer("stage2_block1").attn.qkv.kernel.numpy(),
    )
    np.testing.assert_array_equal(dense.get_layer("stage4_norm").gamma.numpy(), np.ones(256))
    psa = dense.get_layer("stage4_block1").attn.pointwise_qk.kernel.numpy()
    assert 0.01 < psa.std() < 0.03 and np.abs(psa).max() <= 0.04


def test_classifier_state_dict_path_initialises_dense(reference_weights):
    dense = _dense()
    report = load_classifier_weights(dense, reference_weights, verbose=False)
    assert len(report["loaded"]) > 150
    with pytest.raises(ValueError, match="another variant"):
        load_classifier_weights(
            keras_sepvit.SepViTTiny(include_top=False, dense=True, input_shape=(None, None, 3)),
            reference_weights,
            verbose=False,
        )


def test_dense_state_dict_into_a_classifier_is_refused(dense_reference):
    classifier = keras_sepvit.SepViTLite(include_preprocessing=False)
    with pytest.raises(ValueError, match="dense=True"):
        keras_sepvit.load_official_weights(classifier, dense_reference[0])
