"""Classify image files with a .tflite SepViT: the code a phone app would port.

    python examples/run_tflite.py runs/digits/export/model_int8.tflite img1.png img2.jpg \
        [--labels labels.txt] [--top-k 3] [--threads 2] [--crop-fraction 0.875]

Only the LiteRT interpreter, numpy and Pillow: decode each file to the pixels
the training pipeline (`keras_sepvit.data`, TensorFlow's decoders) gives,
prepare it as evaluation does (`keras_sepvit.data.center_crop`: short side to
size / crop fraction, bicubic, centre crop; mirrored without TensorFlow in
`keras_sepvit/export/device_preprocessing.py`, so the device sees the pixels
the accuracy figures were measured on), apply the model's own input
quantization (int8 files take int8), run, dequantize the output, print the
top-k labels and the latency. Use the crop fraction the model was evaluated
with (the digits demo: 1.0). A file that cannot be read is reported by name
and skipped; the run then ends with exit status 1, as does a model file that
is not a .tflite model.
"""

import argparse
import importlib.util
import os
import struct
import sys
import time
import zlib

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

# The formats TensorFlow's `tf.io.decode_image` reads, as keras_sepvit.data does.
TRAINING_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# What Pillow raises on a missing, truncated or corrupt file.
UNREADABLE = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def decode_image(path):
    """(H, W, 3) uint8: the pixels `tf.io.decode_image(..., channels=3)` gives for the file.

    As TensorFlow's decoders: 16-bit PNGs keep their high byte (libpng's
    strip_16, not Pillow's clip to 255), grey is repeated into RGB, alpha is
    dropped, palettes are expanded, an animated GIF gives its first frame.
    JPEG: Pillow's accurate integer IDCT, which TensorFlow uses with
    `dct_method="INTEGER_ACCURATE"` (its default IDCT differs by a few levels).
    """
    with Image.open(path) as image:
        if image.format not in TRAINING_FORMATS:
            raise ValueError(
                f"a {image.format} image; the training pipeline reads {', '.join(TRAINING_FORMATS)}"
            )
        image.load()
        if image.mode.startswith("I"):  # 16-bit grey ("I;16", "I;16B", "I")
            grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"))


def _load_device_preprocessing():
    """keras_sepvit/export/device_preprocessing.py loaded alone (NumPy and Pillow):
    importing the keras_sepvit package would load Keras and TensorFlow."""
    spec = importlib.util.find_spec("keras_sepvit")  # finds, does not import
    roots = list(spec.submodule_search_locations) if spec else []
    roots.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "keras_sepvit"))
    for root in roots:
        path = os.path.join(root, "export", "device_preprocessing.py")
        if os.path.isfile(path):
            module_spec = importlib.util.spec_from_file_location("device_preprocessing", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    raise ImportError("keras_sepvit/export/device_preprocessing.py not found: install keras-sepvit")


device_preprocessing = _load_device_preprocessing()


def load_image(path, height, width, crop_fraction=device_preprocessing.CROP_FRACTION,
               stretch=False):  # fmt: skip
    """RGB in [0, 255] float32 (SepViT normalises inside), as evaluation prepares it:
    `device_preprocessing.prepare_image` (short side, centre crop). `stretch=True`:
    the old bilinear stretch to (height, width), which evaluation never does."""
    pixels = decode_image(path)
    if stretch:
        image = Image.fromarray(pixels).resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.float32)
    if height != width:
        raise ValueError(
            f"evaluation's centre crop is square, the model takes {height}x{width}: "
            "use --stretch for a non-square model"
        )
    return device_preprocessing.prepare_image(pixels, height, crop_fraction)


def classify(interpreter, image):
    """One image (H, W, 3) float -> class scores (dequantized) and the invoke time (s)."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    x = image[None]
    if inp["dtype"] != np.float32:  # full-integer model: quantize like the converter did
        scale, zero_point = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    start = time.perf_counter()
    interpreter.invoke()
    elapsed = time.perf_counter() - start
    y = interpreter.get_tensor(out["index"])[0]
    if out["dtype"] != np.float32:
        scale, zero_point = out["quantization"]
        y = (y.astype(np.float32) - zero_point) * scale
    return y, elapsed


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1. Received: {value}")
    return value


def _crop_fraction(text):
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]. Received: {value}")
    return value


def _open_model(path, threads):
    """(interpreter, height, width, classes); a file that is not a .tflite model ends the
    run with one line that names it (exit status 1)."""
    try:
        interpreter = Interpreter(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
        _, height, width, _ = interpreter.get_input_details()[0]["shape"]
        classes = int(interpreter.get_output_details()[0]["shape"][-1])
    except (ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(
            f"{path}: not a readable .tflite model ({reason}); export it again with "
            "keras_sepvit.export.to_tflite or export/export_model.py"
        ) from None
    return interpreter, int(height), int(width), classes


def _read_labels(parser, path, classes):
    try:
        with open(path) as f:
            labels = [line.strip() for line in f]
    except OSError as error:
        parser.error(f"cannot read --labels {path!r}: {error.strerror}")
    while labels and not labels[-1]:  # trailing blank lines
        labels.pop()
    if len(labels) != classes:
        parser.error(
            f"--labels {path!r} has {len(labels)} labels, the model {classes} classes: give "
            f"one label per class, in the model's class order. Received: {len(labels)} labels"
        )
    return labels


def main(argv=None):
    """Prints and returns [(path, [(label, score), ...])] for the readable images.

    Exits with status 2 on bad arguments (before running) and, after
    classifying the others, with status 1 if any image could not be read.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help=".tflite file")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    p.add_argument("--labels", default=None, help="text file, one label per class and line")
    p.add_argument("--top-k", type=_positive_int, default=3, help="labels to print per image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--crop-fraction",
        type=_crop_fraction,
        default=device_preprocessing.CROP_FRACTION,
        help="evaluation's: short side to size / this, centre crop (the digits demo: 1.0)",
    )
    p.add_argument(
        "--stretch",
        action="store_true",
        help="stretch the whole image to the input size (bilinear), NOT as evaluation does",
    )
    args = p.parse_args(argv)

    if not os.path.isfile(args.model):
        p.error(f"model file not found: {args.model!r}")
    interpreter, height, width, classes = _open_model(args.model, args.threads)
    if height != width and not args.stretch:
        raise SystemExit(
            f"{args.model}: the model takes {height}x{width} images, evaluation's centre crop "
            "is square: pass --stretch to stretch images to the input size"
        )
    labels = _read_labels(p, args.labels, classes) if args.labels else None
    if args.stretch:
        print(f"Preparing images by stretching them to {width}x{height} (bilinear), "
              "NOT as evaluation does")  # fmt: skip
    else:
        print(device_preprocessing.describe(height, args.crop_fraction))
    results = []
    latencies = []
    failed = []
    for path in args.images:
        try:
            image = load_image(path, height, width, args.crop_fraction, args.stretch)
        except UNREADABLE as error:
            failed.append(path)
            print(f"{path}: skipped, not a readable image ({error})", file=sys.stderr)
            continue
        scores, elapsed = classify(interpreter, image)
        latencies.append(elapsed)
        top = np.argsort(scores)[::-1][: args.top_k]
        named = [(labels[i] if labels else str(i), float(scores[i])) for i in top]
        results.append((path, named))
        print(f"{path}: " + ", ".join(f"{name} {score:.3f}" for name, score in named))
    if latencies:
        print(
            f"latency: median {1000 * np.median(latencies):.2f} ms over {len(latencies)} images "
            f"({args.threads} threads)"
        )
    if failed:
        raise SystemExit(
            f"{len(failed)} of {len(args.images)} files could not be read: {', '.join(failed)} "
            "(check the paths; JPEG, PNG, GIF or BMP files)"
        )
    return results


if __name__ == "__main__":
    main()
