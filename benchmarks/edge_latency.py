"""Edge latency: SepViT-Lite vs MobileNetV2 and EfficientNetB0 as TFLite files, same run.

    python benchmarks/edge_latency.py [--size 224] [--runs 30] [--quick]

Each model is converted the same way (keras_sepvit.export.to_tflite: float32,
and full-integer int8 calibrated on the same images) and timed in the LiteRT
interpreter (XNNPACK), batch 1, 1 and 2 threads, median over --runs after
warm-up. Prints a Markdown table with the ratio SepViT-Lite / peer and writes
it with a PNG plot to benchmarks/results/. Weights are random: latency does
not depend on them, but int8 calibration does, so SepViT's zero-initialised
window tokens and biases are perturbed (an untrained SepViT has degenerate
int8 ranges that LiteRT aborts on).
"""

import argparse
import os
import platform
import tempfile

import numpy as np


def _models(size):
    import keras

    import keras_sepvit

    shape = (size, size, 3)
    sepvit = keras_sepvit.SepViTLite(input_shape=shape)
    rng = np.random.default_rng(0)
    for w in sepvit.weights:
        w.assign(w.numpy() + rng.normal(scale=0.02, size=w.shape).astype("float32"))
    return {
        "SepViT-Lite": sepvit,
        "MobileNetV2": keras.applications.MobileNetV2(weights=None, input_shape=shape),
        "EfficientNetB0": keras.applications.EfficientNetB0(weights=None, input_shape=shape),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30, help="timed runs (median)")
    p.add_argument("--calibration", type=int, default=32, help="int8 calibration images")
    p.add_argument("--quick", action="store_true", help="tiny settings (test suite)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.calibration = 64, 2, 2
    import keras
    import tensorflow as tf

    from keras_sepvit.export import TFLiteRunner, median_latency_ms, to_tflite

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (args.calibration, args.size, args.size, 3)).astype("float32")
    results = {}  # (model, quantization, threads) -> ms
    with tempfile.TemporaryDirectory() as folder:
        for name, model in _models(args.size).items():
            for quantization in (None, "int8"):
                path = to_tflite(
                    model,
                    os.path.join(folder, f"{name}_{quantization}.tflite"),
                    quantization=quantization,
                    representative_data=images,
                    sample_inputs=images[:1],
                )
                for threads in (1, 2):
                    runner = TFLiteRunner(path, num_threads=threads)
                    results[name, quantization, threads] = median_latency_ms(
                        runner, images[:1], args.runs
                    )
    header = (
        f"TFLite (LiteRT, XNNPACK) latency, batch 1, {args.size}x{args.size}, median of "
        f"{args.runs}; {platform.machine()}, {os.cpu_count()} cores, keras {keras.__version__}, "
        f"tensorflow {tf.__version__}"
    )
    lines = [header, "", "| model | precision | threads | ms | SepViT-Lite / model |"]
    lines.append("|---|---|---|---|---|")
    for (name, quantization, threads), ms in results.items():
        ratio = results["SepViT-Lite", quantization, threads] / ms
        precision = quantization or "float32"
        shown = "" if name == "SepViT-Lite" else f"{ratio:.2f}x"
        lines.append(f"| {name} | {precision} | {threads} | {ms:.2f} | {shown} |")
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        _save(args.out, table, results)
    return results


def _save(folder, table, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "edge_latency.md"), "w") as f:
        f.write(table + "\n")
    names = sorted({k[0] for k in results}, key=lambda n: n != "SepViT-Lite")
    settings = [(q, t) for q in (None, "int8") for t in (1, 2)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(
            np.arange(len(settings)) + i * width,
            [results[name, q, t] for q, t in settings],
            width,
            label=name,
        )
    ax.set_xticks(np.arange(len(settings)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels([f"{q or 'float32'}, {t} thr" for q, t in settings])
    ax.set_ylabel("latency (ms, median)")
    ax.set_title("TFLite latency, batch 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "edge_latency.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
