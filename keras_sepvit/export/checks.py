"""The checks both exporters run: arguments, calibration data, and the file
against Keras.

Before any conversion: the batch size, the output path, and the calibration
images (`calibration_images`, one check for TFLite and ONNX: a broken
calibration set gives a quantized file that runs but is wrong). After it:
`compare` (the file's outputs on sample inputs) and `agreement_check` (a
quantized file's top-1 / per-pixel agreement with Keras on calibration
images). A file that fails is an error, never left at the user's path.
"""

import os

import numpy as np

from keras_sepvit.export.signatures import is_segmenter, static_input_shape, takes_raw_pixels

# Least per-pixel argmax agreement of a float (float32 / float16) segmenter
# file with Keras: rounding may flip near-ties, a wrong graph flips most pixels.
FLOAT_PIXEL_AGREEMENT = 0.99


def check_batch_size(batch_size):
    """Raises ValueError unless `batch_size` is a positive int or None."""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be a positive int or None (dynamic). "
            f"Received: batch_size={batch_size!r}"
        )


def check_output_path(path, suffix):
    """`path` as a str, after checking its suffix and that it can be written
    (its folder is created if missing)."""
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise ValueError(f"The output file must end with {suffix!r}. Received: path={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise ValueError(f"Cannot create the folder of path={path!r}: {err}") from err
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"Cannot write to path={path!r}: the folder or file is read-only")
    return path


def sample_inputs(model, inputs):
    """`inputs` as float32, or two random [0, 255] images at the model's input size."""
    if inputs is not None:
        return np.asarray(inputs, "float32")
    shape = static_input_shape(model)
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (2,) + shape).astype("float32")


def representative_dataset(data, limit=200):
    """A TFLite representative-dataset generator from arrays, a tf.data dataset,
    or an iterable of batches."""

    def generator():
        count = 0
        iterable = data
        if hasattr(data, "unbatch"):  # tf.data: feed images one at a time
            iterable = data.unbatch().as_numpy_iterator()
        for item in iterable:
            image = item[0] if isinstance(item, (tuple, list)) else item
            image = np.asarray(image, "float32")
            batch = image[None] if image.ndim == 3 else image
            for single in batch:
                yield [single[None]]
                count += 1
                if count >= limit:
                    return

    return generator


def calibration_images(representative_data, model=None, limit=200):
    """The calibration images as one (N, H, W, C) float32 array, validated.

    A broken calibration set gives a quantized file that runs but is wrong
    (top-1 agreement with Keras of 0.0-0.56 was measured for NaN, all-zero
    and [0, 1]-scaled images), so it is refused here, before any work.
    With `model`, the images must also have its input shape and, for a model
    that normalises inside, be raw [0, 255] pixels.
    """
    try:
        batches = [b[0] for b in representative_dataset(representative_data, limit)()]
    except (TypeError, ValueError) as err:
        raise ValueError(
            "`representative_data` must be an array (N, H, W, C), a tf.data dataset of "
            f"(images, labels) batches or an iterable of image batches. Received: {err}"
        ) from err
    if not batches:
        raise ValueError(
            "`representative_data` holds no images; give a few hundred training images. "
            "Received: 0 images"
        )
    images = np.concatenate(batches)  # (N, H, W, C)
    if model is not None:
        expected = tuple(model.input_shape[1:])
        if images.shape[1:] != expected:
            raise ValueError(
                f"Calibration images must have the model's input shape {expected}. "
                f"Received: images of shape {images.shape[1:]}"
            )
    finite = np.isfinite(images)
    if not finite.all():
        bad = int((~finite).reshape(len(images), -1).any(-1).sum())
        values = images[finite]
        seen = f"min={values.min()}, max={values.max()}" if values.size else "no finite value"
        raise ValueError(
            f"`representative_data` holds non-finite values (NaN or inf) in {bad} of "
            f"{len(images)} images. Received: {seen} among the finite ones"
        )
    low, high = float(images.min()), float(images.max())
    if high - low < 1e-6:
        raise ValueError(
            "`representative_data` is constant (every pixel the same): calibration "
            f"ranges would be degenerate. Received: all values {low}"
        )
    # [0, 1]-scaled images reach at most 1, ImageNet-normalised ones about 2.6.
    if model is not None and takes_raw_pixels(model) and high <= 3.0:
        raise ValueError(
            "This model normalises [0, 255] RGB inside (include_preprocessing=True), but "
            "`representative_data` is not in that range (scaled to [0, 1] or normalised "
            f"already?). Received: min={low:.4g}, max={high:.4g}; pass the images as the "
            "model receives them at inference."
        )
    return images


def _parts(outputs):
    return outputs if isinstance(outputs, dict) else {"output": outputs}


def _relative_error(got, expected):
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-12))


def _pixel_agreement(got, expected):
    return float((got.argmax(-1) == expected.argmax(-1)).mean())


def agreement_check(name, got, expected, min_agreement, segmenter=False):
    """Top-1 agreement of a quantized classifier with Keras, per-pixel argmax
    agreement of a segmenter, or the relative error of other outputs (feature
    maps, a detector's raw outputs)."""
    if segmenter:
        agreement = _pixel_agreement(got, expected)
        if agreement < min_agreement:
            raise RuntimeError(
                f"{name} agrees with the Keras model on the class of only {agreement:.1%} of "
                f"the pixels of {len(got)} calibration images (< min_agreement={min_agreement}):"
                " the quantized file is broken. Check the calibration images."
            )
        return
    if not isinstance(expected, dict) and expected.ndim == 2 and expected.shape[-1] > 1:
        agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
        if agreement < min_agreement:
            raise RuntimeError(
                f"{name} agrees with the Keras model on the top-1 class of only "
                f"{agreement:.0%} of {len(got)} calibration images (< min_agreement="
                f"{min_agreement}): the quantized file is broken. Check the calibration "
                "images (the model's input range, real training images)."
            )
        return
    got, expected = _parts(got), _parts(expected)
    for key in expected:
        error = _relative_error(got[key], expected[key])
        if error > 1.0 - min_agreement / 2:
            raise RuntimeError(
                f"{name} differs from the Keras model by a relative error of {error:.2f} on "
                f"the calibration images ({key}): the quantized file is broken."
            )


def compare(name, got, expected, model, tolerance, default_tolerance):
    """Checks a file's outputs against Keras' on the sample inputs.

    Classifiers: max |difference| <= tolerance (default `default_tolerance`).
    Dense tasks (segmenters, dict outputs) without an explicit `tolerance`:
    relative error <= `default_tolerance` per output, and for a segmenter
    per-pixel argmax agreement >= `FLOAT_PIXEL_AGREEMENT`.
    """
    got_parts, expected_parts = _parts(got), _parts(expected)
    if sorted(got_parts) != sorted(expected_parts):
        raise RuntimeError(
            f"{name} has outputs {sorted(got_parts)}, the Keras model {sorted(expected_parts)}"
        )
    for key, value in expected_parts.items():
        out = np.asarray(got_parts[key])
        if not np.isfinite(out).all() or out.shape != value.shape:
            raise RuntimeError(f"{name} gives non-finite or mis-shaped outputs {out.shape}")
    dense = is_segmenter(model) or isinstance(expected, dict)
    if tolerance is None and dense:
        if default_tolerance is None:
            return
        for key, value in expected_parts.items():
            error = _relative_error(got_parts[key], value)
            if error > default_tolerance:
                raise RuntimeError(
                    f"{name} differs from the Keras model by a relative error of {error:.2e} "
                    f"({key}) > {default_tolerance}"
                )
        if is_segmenter(model):
            agreement = _pixel_agreement(got, expected)
            if agreement < FLOAT_PIXEL_AGREEMENT:
                raise RuntimeError(
                    f"{name} agrees with the Keras model on the class of only {agreement:.2%} "
                    f"of the pixels (< {FLOAT_PIXEL_AGREEMENT})"
                )
        return
    tolerance = default_tolerance if tolerance is None else tolerance
    if tolerance is not None:
        diff = max(float(np.abs(got_parts[k] - v).max()) for k, v in expected_parts.items())
        if diff > tolerance:
            raise RuntimeError(
                f"{name} differs from the Keras model by {diff:.2e} > tolerance {tolerance}"
            )
