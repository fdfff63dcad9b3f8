"""Argument validation of the public builders: ValueErrors that name the value received.

Used by `keras_sepvit.model` (the `SepViT*` builders), `keras_sepvit.hub`
(`SepViTBackbone`) and the task heads, so one check answers one mistake the
same way everywhere.
"""

import numbers

import keras

from keras_sepvit.stages import DESIGN_RESOLUTION, MIN_SIZE, STAGE_STRIDES


def is_int(value):
    """True for a Python or NumPy integer, False for bool and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """True for a real number (int, float, NumPy scalar), False for bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_ints(arg, value, count):
    """`value` as a tuple of `count` positive Python ints, or a ValueError."""
    try:
        entries = tuple(value)
    except TypeError:
        entries = None
    if entries is None or len(entries) != count:
        raise ValueError(f"`{arg}` needs {count} entries, one per stage. Received: {arg}={value!r}")
    if not all(is_int(v) and v >= 1 for v in entries):
        raise ValueError(f"`{arg}` entries must be positive ints. Received: {arg}={value!r}")
    return tuple(int(v) for v in entries)


def validate_config(depths, channels, num_heads, window_sizes, mlp_ratio, drop_path_rate):
    """The per-stage table as Python ints, each entry checked (ValueError otherwise)."""
    stages = len(STAGE_STRIDES)
    depths = positive_ints("depths", depths, stages)
    channels = positive_ints("channels", channels, stages)
    num_heads = positive_ints("num_heads", num_heads, stages)
    for stage, (width, heads) in enumerate(zip(channels, num_heads)):
        if width % heads:
            raise ValueError(
                f"Stage {stage + 1} has {width} channels, not divisible by its {heads} "
                f"heads. Received: channels={channels}, num_heads={num_heads}"
            )
    try:
        per_stage = [tuple(sizes) for sizes in window_sizes]
    except TypeError:
        per_stage = None
    if per_stage is None or len(per_stage) != stages:
        raise ValueError(
            f"`window_sizes` needs {stages} entries, one tuple of window sizes per stage. "
            f"Received: window_sizes={window_sizes!r}"
        )
    for stage, (depth, sizes) in enumerate(zip(depths, per_stage)):
        if len(sizes) != depth:
            raise ValueError(
                f"Stage {stage + 1} has {depth} blocks but {len(sizes)} window sizes. "
                f"Received: window_sizes={window_sizes!r}"
            )
        if not all(is_int(ws) and ws >= 1 for ws in sizes):
            raise ValueError(
                f"Window sizes must be positive ints. Received: window_sizes={window_sizes!r}"
            )
    window_sizes = tuple(tuple(int(ws) for ws in sizes) for sizes in per_stage)
    if not (is_number(drop_path_rate) and 0.0 <= drop_path_rate < 1.0):
        raise ValueError(
            "`drop_path_rate` must be a float in [0, 1). "
            f"Received: drop_path_rate={drop_path_rate!r}"
        )
    if not (is_number(mlp_ratio) and int(min(channels) * mlp_ratio) >= 1):
        raise ValueError(f"`mlp_ratio` must be a positive float. Received: mlp_ratio={mlp_ratio!r}")
    return depths, channels, num_heads, window_sizes, float(drop_path_rate), float(mlp_ratio)


def validate_input_shape(
    input_shape, input_tensor, include_top, data_format, name, arg="input_shape"
):
    """The (H, W, C) or (C, H, W) input shape, checked; defaults as keras.applications.

    `arg`: the argument's name in error messages (`SepViTBackbone` calls it
    `image_shape`).
    """
    if input_tensor is not None:
        if not keras.utils.is_keras_tensor(input_tensor):
            raise ValueError(
                "`input_tensor` must be a Keras tensor (a `keras.Input(...)` or a layer's "
                "output). To run the model on a tensor of images, build it and call it: "
                f"`model(x)`. Received: input_tensor of type {type(input_tensor).__name__}"
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if len(tensor_shape) != 3:
            raise ValueError(
                "`input_tensor` must be a batch of images (batch, height, width, channels), "
                "or (batch, channels, height, width) for 'channels_first'. "
                f"Received: input_tensor.shape={input_tensor.shape}"
            )
        if input_shape is None:
            input_shape = tensor_shape
        elif len(tuple(input_shape)) != len(tensor_shape) or any(
            a is not None and b is not None and a != b
            for a, b in zip(tuple(input_shape), tensor_shape)
        ):
            raise ValueError(
                f"`{arg}` does not match the shape of `input_tensor`. "
                f"Received: {arg}={input_shape}, input_tensor.shape={input_tensor.shape}"
            )
    channels_first = data_format == "channels_first"
    if input_shape is None:
        side = DESIGN_RESOLUTION if include_top else None
        return (3, side, side) if channels_first else (side, side, 3)
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = ()
    layout = "(channels, height, width)" if channels_first else "(height, width, channels)"
    if len(dims) != 3 or not all(d is None or (is_int(d) and d >= 0) for d in dims):
        raise ValueError(
            f"`{arg}` must be {layout} with int or None sizes (image data format "
            f"{data_format!r}). Received: {arg}={input_shape!r}"
        )
    dims = tuple(None if d is None else int(d) for d in dims)
    channels = dims[0] if channels_first else dims[-1]
    spatial = dims[1:] if channels_first else dims[:2]
    if channels is None or channels < 1:
        raise ValueError(
            f"{name} needs a known channel count, {layout} with image data format "
            f"{data_format!r}. Received: {arg}={input_shape!r}"
        )
    for axis, size in zip(("height", "width"), spatial):
        if size is not None and size < MIN_SIZE:
            raise ValueError(
                f"{name} needs an input {axis} of at least {MIN_SIZE} (the total stride), "
                f"or None. Received: {arg}={input_shape!r}"
            )
    return dims


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


def validate_attention(attention):
    """`attention` of `SepViT`: None (the paper's) or "global"."""
    if attention not in (None, "global"):
        raise ValueError(f'`attention` must be None or "global". Received: attention={attention!r}')
    return attention


def validate_pooling(pooling):
    """`pooling` of a model without top: None, "avg" or "max"."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    return pooling


def validate_top(classes, classifier_activation):
    """(classes as an int, the activation as a callable or None) of a classifier."""
    if not (is_int(classes) and classes >= 1):
        raise ValueError(f"`classes` must be a positive int. Received: classes={classes!r}")
    try:
        activation = keras.activations.get(classifier_activation)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "`classifier_activation` must be None, an activation name such as "
            "'softmax', or a callable. "
            f"Received: classifier_activation={classifier_activation!r}"
        ) from err
    return int(classes), activation
