"""Layer contracts: serialization round trips, window algebra, masking, reach of PWA."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

import keras_sepvit
from keras_sepvit import layers as sepvit_layers
from keras_sepvit.inference import ConstantPadding2D, SpaceToDepth
from keras_sepvit.layers import (
    ChannelsLastRescaling,
    DropPath,
    GroupedSelfAttention,
    LayerNorm,
    PositionEncoding,
    SeparableSelfAttention,
    SepViTBlock,
    WindowMerge,
    WindowPartition,
    WindowTokens,
)

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.normal(size=shape).astype("float32")


def _randomize(layer, seed=1):
    """Random weights everywhere (zero-initialised tokens/biases would hide bugs)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(scale=0.2, size=w.shape).astype("float32"))


LAYER_CASES = {
    "partition": (lambda: WindowPartition(7), lambda: (_rand(2, 14, 21, 8),), {}),
    "partition_padded": (lambda: WindowPartition(7), lambda: (_rand(2, 9, 16, 8),), {}),
    "merge": (
        lambda: WindowMerge(7),
        lambda: ([_rand(2, 6, 49, 8), _rand(2, 14, 21, 8)],),
        {},
    ),
    "tokens": (
        lambda: WindowTokens((2, 3)),
        lambda: (_rand(2, 6, 49, 8),),
        {"grid_hw": (2, 3)},
    ),
    "tokens_resized": (
        lambda: WindowTokens((2, 3)),
        lambda: (_rand(2, 12, 49, 8),),
        {"grid_hw": (3, 4)},
    ),
    "tokens_zero": (
        lambda: WindowTokens((2, 3), learnable=False),
        lambda: (_rand(2, 6, 49, 8),),
        {"grid_hw": (2, 3)},
    ),
    "dssa": (lambda: SeparableSelfAttention(2), lambda: (_rand(2, 4, 50, 8),), {}),
    "window_attention": (
        lambda: SeparableSelfAttention(2, pointwise=False),
        lambda: (_rand(2, 4, 49, 8),),
        {},
    ),
    "dssa_avg_pool": (
        lambda: SeparableSelfAttention(2, window_representation="avg_pool"),
        lambda: (_rand(2, 4, 49, 8),),
        {},
    ),
    "dssa_dw_conv": (
        lambda: SeparableSelfAttention(2, window_representation="dw_conv", window_size=7),
        lambda: (_rand(2, 4, 49, 8),),
        {},
    ),
    "position_encoding": (lambda: PositionEncoding(), lambda: (_rand(2, 7, 7, 8),), {}),
    "layer_norm": (lambda: LayerNorm(epsilon=1e-5), lambda: (_rand(2, 7, 7, 8),), {}),
    "drop_path": (lambda: DropPath(0.3, seed=1), lambda: (_rand(2, 7, 7, 8),), {}),
    "block_separable": (
        lambda: SepViTBlock(2, 7, token_grid=(2, 2), drop_path_rate=0.1),
        lambda: (_rand(2, 14, 14, 8),),
        {},
    ),
    "block_separable_padded": (
        lambda: SepViTBlock(2, 7, token_grid=(2, 2)),
        lambda: (_rand(2, 9, 16, 8),),
        {},
    ),
    "block_window": (
        lambda: SepViTBlock(2, 7, attention="window"),
        lambda: (_rand(2, 14, 14, 8),),
        {},
    ),
    "block_global": (
        lambda: SepViTBlock(2, 7, attention="global"),
        lambda: (_rand(2, 7, 7, 8),),
        {},
    ),
    "block_zero_tokens": (
        lambda: SepViTBlock(2, 7, token_grid=(2, 2), window_token="zero"),
        lambda: (_rand(2, 14, 14, 8),),
        {},
    ),
    "gsa": (
        lambda: GroupedSelfAttention(2, token_grid=(2, 2)),
        lambda: (_rand(2, 28, 28, 8),),
        {},
    ),
    "channels_last_rescaling": (
        lambda: ChannelsLastRescaling(scale=[0.5, 2.0, -1.0], offset=[0.1, 0.0, -3.0]),
        lambda: (_rand(2, 5, 6, 3),),
        {},
    ),
    "constant_padding": (  # keras_sepvit.inference: the folded stem's padding
        lambda: ConstantPadding2D(((3, 0), (3, 1)), value=[1.0, -2.0, 0.5]),
        lambda: (_rand(2, 5, 6, 3),),
        {},
    ),
    "space_to_depth": (  # keras_sepvit.inference: the int8 file's stem
        lambda: SpaceToDepth(2),
        lambda: (_rand(2, 4, 6, 3),),
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_serialization_round_trip(case):
    make, make_inputs, kwargs = LAYER_CASES[case]
    layer = make()
    inputs = make_inputs()
    expected = layer(*inputs, **kwargs)
    _randomize(layer)
    expected = ops.convert_to_numpy(layer(*inputs, **kwargs))

    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    for copy in (clone, restored):
        copy(*inputs, **kwargs)  # build
        assert len(copy.weights) == len(layer.weights)
        copy.set_weights(layer.get_weights())
        np.testing.assert_allclose(
            ops.convert_to_numpy(copy(*inputs, **kwargs)), expected, rtol=1e-6, atol=1e-6
        )
    assert tuple(layer.compute_output_shape(*[_shape(i) for i in inputs])) == expected.shape


def test_space_to_depth_is_tensorflows_order():
    import tensorflow as tf

    x = _rand(2, 8, 12, 3)
    for block in (2, 4):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(SpaceToDepth(block)(x)), tf.nn.space_to_depth(x, block).numpy()
        )
    with pytest.raises(ValueError, match=r"divisible by 4.*\(2, 6, 12, 3\)"):
        SpaceToDepth(4)(_rand(2, 6, 12, 3))
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match=f"block_size={bad!r}"):
            SpaceToDepth(bad)


def test_layer_norm_equals_keras_layer_normalization():
    """Same weights, same numbers as Keras' LayerNormalization (variance via MUL)."""
    x = _rand(2, 5, 7, 16) * 3.0 + 1.5
    ours, theirs = LayerNorm(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
    ours.build(x.shape)
    theirs.build(x.shape)
    _randomize(ours)
    theirs.set_weights(ours.get_weights())
    assert [w.path.split("/")[-1] for w in ours.weights] == ["gamma", "beta"]
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), atol=2e-6
    )
    with pytest.raises(ValueError, match="last axis only"):
        LayerNorm(axis=1)(x)


def _shape(x):
    if isinstance(x, list):
        return [tuple(t.shape) for t in x]
    return tuple(x.shape)


def test_all_public_layers_are_covered_by_round_trips():
    covered = {type(LAYER_CASES[c][0]()) for c in LAYER_CASES}
    public = {
        obj
        for obj in vars(keras_sepvit).values()
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer)
    }
    assert public <= covered, public - covered


@pytest.mark.parametrize("height,width", [(14, 21), (9, 16), (7, 7), (1, 30)])
def test_partition_merge_inverse_and_order(height, width):
    x = _rand(2, height, width, 3)
    windows = ops.convert_to_numpy(WindowPartition(7)(x))
    grid_h, grid_w = -(-height // 7), -(-width // 7)
    assert windows.shape == (2, grid_h * grid_w, 49, 3)
    padded = np.zeros((2, grid_h * 7, grid_w * 7, 3), "float32")
    padded[:, :height, :width] = x
    # Row-major windows, row-major pixels: window (r, c), pixel (i, j).
    for r in range(grid_h):
        for c in range(grid_w):
            block = padded[:, r * 7 : (r + 1) * 7, c * 7 : (c + 1) * 7]
            np.testing.assert_array_equal(windows[:, r * grid_w + c], block.reshape(2, 49, 3))
    merged = ops.convert_to_numpy(WindowMerge(7)([windows, x]))
    np.testing.assert_array_equal(merged, x)


def test_window_tokens_exact_at_design_grid_and_resized_elsewhere():
    layer = WindowTokens((2, 3))
    windows = _rand(1, 6, 4, 5)
    layer(windows, grid_hw=(2, 3))
    tokens = _rand(1, 6, 1, 5)
    layer.tokens.assign(tokens)
    out = ops.convert_to_numpy(layer(windows, grid_hw=(2, 3)))
    np.testing.assert_array_equal(out[:, :, :1], tokens)
    np.testing.assert_array_equal(out[:, :, 1:], windows)
    # On a 4x6 grid each token is a bilinear blend; the corners keep their token.
    big = ops.convert_to_numpy(layer(_rand(1, 24, 4, 5), grid_hw=(4, 6)))[0, :, 0]
    grid = tokens.reshape(2, 3, 5)
    np.testing.assert_allclose(big.reshape(4, 6, 5)[0, 0], grid[0, 0], atol=1e-6)
    np.testing.assert_allclose(big.reshape(4, 6, 5)[-1, -1], grid[-1, -1], atol=1e-6)
    assert big.min() >= tokens.min() - 1e-6 and big.max() <= tokens.max() + 1e-6


def _changed_windows(block, x, window_size):
    """Which windows of the block's output change when pixel (0, 0) changes."""
    base = ops.convert_to_numpy(block(x))
    x2 = x.copy()
    # A random vector: a constant shift of all channels would vanish in LayerNorm.
    x2[:, 0, 0, :] += np.linspace(-1.0, 2.0, x.shape[-1], dtype="float32")
    moved = np.abs(ops.convert_to_numpy(block(x2)) - base).max(axis=(0, 3)) > 1e-6
    height, width = x.shape[1:3]
    pad = ((0, -height % window_size), (0, -width % window_size))
    moved = np.pad(moved, pad)
    grid = moved.reshape(moved.shape[0] // window_size, window_size, -1, window_size)
    return grid.any(axis=(1, 3))


@pytest.mark.parametrize("height,width", [(14, 21), (16, 24)])
def test_one_dssa_block_reaches_every_window(height, width):
    block = SepViTBlock(2, 7, token_grid=(2, 2))
    x = _rand(1, height, width, 8)
    block(x)
    _randomize(block)
    assert _changed_windows(block, x, 7).all()
    # Without PWA the change stays in its window: the check above is not vacuous.
    local = SepViTBlock(2, 7, attention="window")
    local(x)
    _randomize(local)
    changed = _changed_windows(local, x, 7)
    assert changed[0, 0] and changed.sum() == 1


@pytest.mark.parametrize(
    "make,size",
    [
        (lambda: SepViTBlock(2, 14, attention="window"), (7, 7)),
        (lambda: SepViTBlock(2, 7, token_grid=(2, 2)), (5, 6)),
        (lambda: SepViTBlock(2, 7, token_grid=(2, 2)), (9, 16)),
        (lambda: SepViTBlock(2, 7, token_grid=(2, 2), window_representation="avg_pool"), (5, 6)),
        (lambda: SepViTBlock(2, 7, window_representation="dw_conv"), (5, 6)),
        (lambda: SepViTBlock(2, 7, window_representation="dw_conv"), (9, 16)),
    ],
)
def test_padding_is_masked_exactly(make, size):
    """With `None` spatial dims the block pads and masks; with static dims a map
    that fits one window is attended directly. Both must agree."""
    import tensorflow as tf

    x = _rand(2, *size, 8)
    block = make()
    block(x)
    _randomize(block)
    dynamic = tf.function(
        lambda t: block(t), input_signature=[tf.TensorSpec((None, None, None, 8), tf.float32)]
    )
    np.testing.assert_allclose(
        dynamic(x).numpy(), ops.convert_to_numpy(block(x)), rtol=1e-5, atol=1e-5
    )


def test_window_covering_the_map_equals_global_attention():
    x = _rand(2, 7, 7, 8)
    window = SepViTBlock(2, 14, attention="window")
    global_block = SepViTBlock(2, 7, attention="global")
    window(x)
    global_block(x)
    _randomize(window)
    global_block.set_weights(window.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(window(x)), ops.convert_to_numpy(global_block(x)), atol=1e-5
    )


def test_drop_path_drops_whole_samples_in_training_only():
    x = np.ones((256, 4, 4, 2), "float32")
    layer = DropPath(0.5, seed=3)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), x)
    y = ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(256, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 0.3 < (per_sample[:, 0] == 0).mean() < 0.7


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: WindowPartition(0), "window_size=0"),
        (lambda: SeparableSelfAttention(2, window_representation="cls"), "'cls'"),
        (lambda: SeparableSelfAttention(2, window_representation="dw_conv"), "window_size"),
        (lambda: SepViTBlock(2, attention="shifted"), "'shifted'"),
        (lambda: SepViTBlock(2, token_grid=(2, 2), window_token="random"), "'random'"),
        (lambda: SepViTBlock(2, attention="separable"), "token_grid=None"),
        (lambda: DropPath(1.0), "rate=1.0"),
    ],
)
def test_bad_layer_arguments_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="channels=10, num_heads=3"):
        SeparableSelfAttention(3)(_rand(1, 2, 49, 10))


def test_layer_docstring_examples_run():
    failures, tried = doctest.testmod(
        sepvit_layers, extraglobs={"keras": keras}, optionflags=doctest.ELLIPSIS
    )
    assert tried > 0 and failures == 0


def test_layers_stay_channels_last_under_a_channels_first_setting():
    """The model transposes channels-first input once; its layers must not follow
    keras.config.image_data_format() (Keras' Rescaling and convolutions do)."""
    x = _rand(2, 5, 6, 3)
    rescaling = ChannelsLastRescaling(**_scale_offset())
    expected_rescaled = ops.convert_to_numpy(keras.layers.Rescaling(**_scale_offset())(x))
    original = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        peg = PositionEncoding()
        peg.build(x.shape)
        rescaled = ops.convert_to_numpy(rescaling(x))
        encoded = ops.convert_to_numpy(peg(x))
    finally:
        keras.config.set_image_data_format(original)
    np.testing.assert_array_equal(rescaled, expected_rescaled)
    reference = PositionEncoding()
    reference.build(x.shape)
    reference.set_weights(peg.get_weights())
    np.testing.assert_array_equal(encoded, ops.convert_to_numpy(reference(x)))


def _scale_offset():
    return {"scale": [0.5, 2.0, -1.0], "offset": [0.1, 0.0, -3.0]}
