"""Classify image files with a .tflite SepViT: the code a phone app would port.

    python examples/run_tflite.py runs/digits/export/model_int8.tflite img1.png img2.jpg \
        [--labels labels.txt] [--top-k 3] [--threads 2]

Only the LiteRT interpreter, numpy and Pillow: load, resize to the model's
input, apply the model's own input quantization (int8 files take int8),
run, dequantize the output, print the top-k labels and the latency.
"""

import argparse
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


def load_image(path, height, width):
    """RGB in [0, 255] float32, resized to the model's input (SepViT normalises inside)."""
    image = Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help=".tflite file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--labels", default=None, help="text file, one label per line")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    interpreter = Interpreter(model_path=args.model, num_threads=args.threads)
    interpreter.allocate_tensors()
    _, height, width, _ = interpreter.get_input_details()[0]["shape"]
    labels = None
    if args.labels:
        with open(args.labels) as f:
            labels = [line.strip() for line in f]
    results = []
    latencies = []
    for path in args.images:
        scores, elapsed = classify(interpreter, load_image(path, height, width))
        latencies.append(elapsed)
        top = np.argsort(scores)[::-1][: args.top_k]
        named = [(labels[i] if labels else str(i), float(scores[i])) for i in top]
        results.append((path, named))
        print(f"{path}: " + ", ".join(f"{name} {score:.3f}" for name, score in named))
    print(
        f"latency: median {1000 * np.median(latencies):.2f} ms over {len(latencies)} images "
        f"({args.threads} threads)"
    )
    return results


if __name__ == "__main__":
    main()
