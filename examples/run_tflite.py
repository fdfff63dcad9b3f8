"""Classify image files with a .tflite SepViT: the code a phone app would port.

    python examples/run_tflite.py runs/digits/export/model_int8.tflite img1.png img2.jpg \
        [--labels labels.txt] [--top-k 3] [--threads 2]

Only the LiteRT interpreter, numpy and Pillow: decode each file to the pixels
the training pipeline (`keras_sepvit.data`, TensorFlow's decoders) gives,
resize to the model's input, apply the model's own input quantization (int8
files take int8), run, dequantize the output, print the top-k labels and the
latency. A file that cannot be read is reported by name and skipped; the run
then ends with exit status 1.
"""

import argparse
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


def load_image(path, height, width):
    """RGB in [0, 255] float32, resized to the model's input (SepViT normalises inside)."""
    image = Image.fromarray(decode_image(path)).resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


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
    args = p.parse_args(argv)

    if not os.path.isfile(args.model):
        p.error(f"model file not found: {args.model!r}")
    interpreter = Interpreter(model_path=args.model, num_threads=args.threads)
    interpreter.allocate_tensors()
    _, height, width, _ = interpreter.get_input_details()[0]["shape"]
    classes = int(interpreter.get_output_details()[0]["shape"][-1])
    labels = _read_labels(p, args.labels, classes) if args.labels else None
    results = []
    latencies = []
    failed = []
    for path in args.images:
        try:
            image = load_image(path, height, width)
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
            f"{len(failed)} of {len(args.images)} files could not be read: {', '.join(failed)}"
        )
    return results


if __name__ == "__main__":
    main()
